//! Leases that decide which node runs a cron firing.
//!
//! One host alone runs every firing ([`LocalLeases`]). Several nodes
//! sharing a Redis queue backend each try `SET key NX PX ttl` for the
//! firing, keyed by worker, cron expression and scheduled time; exactly one
//! succeeds and runs it ([`RedisLeases`]). The key expires after the ttl, so
//! a node that dies holding it blocks nothing: the next firing has another
//! key.

use async_trait::async_trait;
use std::time::Duration;

use crate::error::Result;

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Try to take `key` for `ttl`; `true` when this caller got it.
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<bool>;
    /// Whether leases are shared with other nodes (then a missed firing is
    /// not reported per node).
    fn is_shared(&self) -> bool {
        false
    }
}

/// A single node: every lease is granted.
pub struct LocalLeases;

#[async_trait]
impl LeaseStore for LocalLeases {
    async fn acquire(&self, _key: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }
}

/// Leases in Redis, shared by every node using the same server.
pub struct RedisLeases {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisLeases {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        RedisLeases {
            conn,
            prefix: "isola:lease:".into(),
        }
    }
}

#[async_trait]
impl LeaseStore for RedisLeases {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(crate::remote::node_id())
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .map_err(crate::remote::redis_err)?;
        Ok(set.is_some())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_until_it_expires() {
        let url = isola_test_services::shared_redis().url();
        let a = RedisLeases::new(crate::remote::redis_connection(&url).await.unwrap());
        let b = RedisLeases::new(crate::remote::redis_connection(&url).await.unwrap());
        let key = isola_test_services::unique("cron");
        let ttl = Duration::from_millis(300);
        assert!(a.acquire(&key, ttl).await.unwrap());
        assert!(!b.acquire(&key, ttl).await.unwrap());
        assert!(!a.acquire(&key, ttl).await.unwrap());
        assert!(b.acquire(&format!("{key}-next"), ttl).await.unwrap());
        // A holder that never comes back blocks the key only until expiry.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.acquire(&key, ttl).await.unwrap());
        assert!(a.is_shared());
        assert!(LocalLeases.acquire(&key, ttl).await.unwrap());
        assert!(LocalLeases.acquire(&key, ttl).await.unwrap());
        assert!(!LocalLeases.is_shared());
    }
}
