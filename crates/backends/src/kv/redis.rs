//! Workers KV on Redis, shared by every node that uses the same server.
//!
//! Layout, per namespace `ns` (`<p>` = `isola:kv:<len(ns)>:<ns>:`):
//! - `<p>v:<key>`: a hash with the value (`v`), the metadata JSON (`m`) and
//!   the expiry (`e`, seconds since the epoch); the expiry is also the
//!   key's Redis expiry (`EXPIREAT`), so Redis removes expired values
//!   itself and never returns them.
//! - `<p>i`: a sorted set of every key name, all with score 0, so
//!   `ZRANGEBYLEX` walks them in byte order, as Workers KV and the embedded
//!   backend list them. A stable cursor (the last key returned) needs an
//!   ordered index: `SCAN` has neither an order nor a cursor that survives
//!   writes. Names of expired keys stay in the index until a listing meets
//!   them and removes them.
//!
//! Every write is one Lua script, so a value and its index entry change
//! together. Scripts touch keys they compute, so this needs a single Redis
//! (or a primary with replicas), not Redis Cluster.

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{KeyInfo, KeyPage, KvStore, KvValue};
use crate::error::Result;
use crate::remote::redis_err;

pub struct RedisKv {
    conn: ConnectionManager,
    put: redis::Script,
    list: redis::Script,
}

const PUT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'm', ARGV[3]) end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'e', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
redis.call('ZADD', KEYS[2], 0, ARGV[5])
return 1
";

/// KEYS[1]: the index. ARGV: value-key prefix, lower bound, upper bound
/// (ZRANGEBYLEX syntax), how many live keys to return. Names whose value
/// is gone (expired or deleted) are dropped from the index on the way.
const LIST: &str = r"
local out = {}
local from = ARGV[2]
local want = tonumber(ARGV[4])
while #out < want do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], from, ARGV[3], 'LIMIT', 0, want - #out)
  if #batch == 0 then break end
  for _, k in ipairs(batch) do
    local vals = redis.call('HMGET', ARGV[1] .. k, 'v', 'e', 'm')
    if vals[1] then
      table.insert(out, {k, vals[2] or '', vals[3] or false})
    else
      redis.call('ZREM', KEYS[1], k)
    end
  end
  from = '(' .. batch[#batch]
end
return out
";

impl RedisKv {
    pub fn new(conn: ConnectionManager) -> Self {
        RedisKv {
            conn,
            put: redis::Script::new(PUT),
            list: redis::Script::new(LIST),
        }
    }
}

fn prefix(namespace: &str) -> String {
    format!("isola:kv:{}:{namespace}:", namespace.len())
}

fn value_key(namespace: &str, key: &str) -> String {
    format!("{}v:{key}", prefix(namespace))
}

fn index_key(namespace: &str) -> String {
    format!("{}i", prefix(namespace))
}

#[async_trait]
impl KvStore for RedisKv {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<KvValue>> {
        let mut conn = self.conn.clone();
        let (data, metadata): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(value_key(namespace, key))
            .arg("v")
            .arg("m")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(data.map(|data| KvValue { data, metadata }))
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expiration: Option<u64>,
        metadata: Option<String>,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .put
            .key(value_key(namespace, key))
            .key(index_key(namespace))
            .arg(value)
            .arg(if metadata.is_some() { "1" } else { "0" })
            .arg(metadata.unwrap_or_default())
            .arg(expiration.map(|e| e.to_string()).unwrap_or_default())
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .del(value_key(namespace, key))
            .ignore()
            .zrem(index_key(namespace), key)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn list(
        &self,
        namespace: &str,
        prefix_: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<KeyPage> {
        let from = match after {
            Some(after) if after >= prefix_ => format!("({after}"),
            _ if prefix_.is_empty() => "-".to_owned(),
            _ => format!("[{prefix_}"),
        };
        let upper = crate::util::prefix_successor(prefix_)
            .map_or_else(|| "+".to_owned(), |s| format!("({s}"));
        let mut conn = self.conn.clone();
        let rows: Vec<(String, String, Option<String>)> = self
            .list
            .key(index_key(namespace))
            .arg(format!("{}v:", prefix(namespace)))
            .arg(from)
            .arg(upper)
            .arg(limit + 1)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let more = rows.len() > limit as usize;
        let keys: Vec<KeyInfo> = rows
            .into_iter()
            .take(limit as usize)
            .map(|(name, expiration, metadata)| KeyInfo {
                name,
                expiration: expiration.parse().ok(),
                metadata,
            })
            .collect();
        Ok(KeyPage { keys, more })
    }
}
