//! Leases that decide which node runs a cron firing, and which node owns
//! a Durable Object.
//!
//! One host alone runs every firing ([`LocalLeases`]). Several nodes
//! sharing a Redis queue backend each try `SET key NX PX ttl` for the
//! firing, keyed by worker, cron expression and scheduled time; exactly one
//! succeeds and runs it ([`RedisLeases`]). The key expires after the ttl, so
//! a node that dies holding it blocks nothing: the next firing has another
//! key.
//!
//! A Durable Object's lease is held by name ([`LeaseStore::hold`]): the
//! holder is the node's address, taken when free, extended while it is
//! the holder's, and given back ([`LeaseStore::release`]) when the node
//! lets the object go. A node that dies holding it blocks the object until
//! the ttl runs out.

use async_trait::async_trait;
use std::time::Duration;

use crate::error::Result;

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Try to take `key` for `ttl`; `true` when this caller got it.
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<bool>;
    /// Hold `key` as `holder` for `ttl` from now: take it when it is free,
    /// extend it when `holder` holds it already; otherwise say who does.
    async fn hold(&self, key: &str, holder: &str, ttl: Duration) -> Result<Held>;
    /// Give `key` back if `holder` holds it (another holder's is left).
    async fn release(&self, key: &str, holder: &str) -> Result<()>;
    /// Whether leases are shared with other nodes (then a missed firing is
    /// not reported per node).
    fn is_shared(&self) -> bool {
        false
    }
}

/// Who holds a lease after [`LeaseStore::hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The caller: it was free and is now taken, or it was the caller's
    /// and is now extended.
    Mine,
    /// Another holder, as it named itself.
    Theirs(String),
}

/// A single node: every lease is granted.
pub struct LocalLeases;

#[async_trait]
impl LeaseStore for LocalLeases {
    async fn acquire(&self, _key: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn hold(&self, _key: &str, _holder: &str, _ttl: Duration) -> Result<Held> {
        Ok(Held::Mine)
    }

    async fn release(&self, _key: &str, _holder: &str) -> Result<()> {
        Ok(())
    }
}

/// Take the lease when free (`SET … PX`), extend it when it is the
/// caller's (`PEXPIRE`); answers the holder, the caller or another.
const HOLD: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
";

/// Delete the lease only if the caller holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Leases in Redis, shared by every node using the same server.
pub struct RedisLeases {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    hold: redis::Script,
    release: redis::Script,
}

impl RedisLeases {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        RedisLeases {
            conn,
            prefix: "isola:lease:".into(),
            hold: redis::Script::new(HOLD),
            release: redis::Script::new(RELEASE),
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl LeaseStore for RedisLeases {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(crate::remote::node_id())
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut conn)
            .await
            .map_err(crate::remote::redis_err)?;
        Ok(set.is_some())
    }

    async fn hold(&self, key: &str, holder: &str, ttl: Duration) -> Result<Held> {
        let mut conn = self.conn.clone();
        let current: String = self
            .hold
            .key(format!("{}{key}", self.prefix))
            .arg(holder)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(crate::remote::redis_err)?;
        Ok(if current == holder {
            Held::Mine
        } else {
            Held::Theirs(current)
        })
    }

    async fn release(&self, key: &str, holder: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(format!("{}{key}", self.prefix))
            .arg(holder)
            .invoke_async(&mut conn)
            .await
            .map_err(crate::remote::redis_err)?;
        Ok(())
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

    #[tokio::test]
    async fn a_held_lease_is_extended_by_its_holder_and_named_to_others() {
        let url = isola_test_services::shared_redis().url();
        let leases = RedisLeases::new(crate::remote::redis_connection(&url).await.unwrap());
        let key = isola_test_services::unique("do");
        let (a, b) = ("http://10.0.0.1:8790", "http://10.0.0.2:8790");
        let ttl = Duration::from_millis(1000);
        // Free: taken.
        assert_eq!(leases.hold(&key, a, ttl).await.unwrap(), Held::Mine);
        assert_eq!(
            leases.hold(&key, b, ttl).await.unwrap(),
            Held::Theirs(a.into())
        );
        // Extended by its holder well past the first ttl.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(leases.hold(&key, a, ttl).await.unwrap(), Held::Mine);
            assert_eq!(
                leases.hold(&key, b, ttl).await.unwrap(),
                Held::Theirs(a.into())
            );
        }
        // Another holder's release leaves it; the holder's frees it.
        leases.release(&key, b).await.unwrap();
        assert_eq!(
            leases.hold(&key, b, ttl).await.unwrap(),
            Held::Theirs(a.into())
        );
        leases.release(&key, a).await.unwrap();
        assert_eq!(leases.hold(&key, b, ttl).await.unwrap(), Held::Mine);
        // A holder that stops extending loses it after the ttl.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(leases.hold(&key, a, ttl).await.unwrap(), Held::Mine);
        // Releasing a free key, or one never held, is no error.
        leases.release(&key, a).await.unwrap();
        leases.release(&key, a).await.unwrap();

        assert_eq!(LocalLeases.hold(&key, a, ttl).await.unwrap(), Held::Mine);
        assert_eq!(LocalLeases.hold(&key, b, ttl).await.unwrap(), Held::Mine);
        LocalLeases.release(&key, b).await.unwrap();
    }
}
