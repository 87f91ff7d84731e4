//! Queues on Redis Streams, shared by every node: at least once across
//! nodes, nothing lost when a node dies holding messages.
//!
//! Layout, per queue `q` (`<p>` = `isola:queue:<len(q)>:<q>:`):
//! - `<p>s`: a stream with consumer group `isola`; each entry holds one
//!   message id. `XREADGROUP` hands new entries to one node (its consumer
//!   name is the node id); `XACK` + `XDEL` remove acked ones.
//! - `<p>m:<id>`: a hash with the message (body, content type, timestamp,
//!   attempts and the id of the stream entry that holds it now).
//! - `<p>l`: a sorted set of the pending stream entries by lease deadline.
//!   A lease taken by a node that dies (`kill -9`, a lost network) runs
//!   out, and the next `lease` by any node takes the entry over with
//!   `XCLAIM`: the message is delivered again, with its attempts counted.
//!   Deadlines rather than `XAUTOCLAIM`'s idle time so each lease keeps the
//!   length its consumer asked for, exactly as the embedded backend does.
//! - `<p>d`: a sorted set of delayed message ids (`send` with a delay, a
//!   retry) by due time; `lease` moves due ones back into the stream.
//!
//! Every operation is one Lua script (atomic), and times come from the
//! Redis server's clock (`TIME`), so nodes with skewed clocks agree.
//! `release_all_leases` does nothing here: other nodes' leases are live,
//! and a dead node's run out by themselves. For the durability a queue
//! promises, run Redis with `appendonly yes` and `appendfsync always`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{Delivery, OutgoingMessage, QueueStore, validate};
use crate::error::{BindingError, Result};
use crate::remote::redis_err;

pub struct RedisQueues {
    conn: ConnectionManager,
    send: redis::Script,
    lease: redis::Script,
    ack: redis::Script,
    retry: redis::Script,
    dead_letter: redis::Script,
    next_visible: redis::Script,
}

/// Shared by the scripts: the server clock in ms, and the consumer group.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ensure_group(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, 'isola', '0', 'MKSTREAM')
  end
end
local function unstream(stream, leases, mk)
  local sid = redis.call('HGET', mk, 's')
  if sid then
    redis.call('XACK', stream, 'isola', sid)
    redis.call('XDEL', stream, sid)
    redis.call('ZREM', leases, sid)
    redis.call('HDEL', mk, 's')
  end
end
";

/// KEYS: stream, delayed. ARGV: prefix, then (id, body, type, delay_ms)*.
const SEND: &str = r"
ensure_group(KEYS[1])
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  local mk = ARGV[1] .. 'm:' .. id
  redis.call('HSET', mk, 'b', ARGV[i + 1], 'c', ARGV[i + 2], 't', now, 'a', 0)
  local delay = tonumber(ARGV[i + 3])
  if delay > 0 then
    redis.call('ZADD', KEYS[2], now + delay, id)
  else
    local sid = redis.call('XADD', KEYS[1], '*', 'id', id)
    redis.call('HSET', mk, 's', sid)
  end
end
return now
";

/// KEYS: stream, delayed, leases. ARGV: prefix, max, lease_ms, consumer.
const LEASE: &str = r"
ensure_group(KEYS[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local mk = ARGV[1] .. 'm:' .. id
  if redis.call('EXISTS', mk) == 1 then
    local sid = redis.call('XADD', KEYS[1], '*', 'id', id)
    redis.call('HSET', mk, 's', sid)
  end
end
local max = tonumber(ARGV[2])
local deadline = now + tonumber(ARGV[3])
local entries = {}
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max)
for _, sid in ipairs(stale) do
  local claimed = redis.call('XCLAIM', KEYS[1], 'isola', ARGV[4], 0, sid)
  if #claimed > 0 and claimed[1] then
    table.insert(entries, claimed[1])
  else
    redis.call('ZREM', KEYS[3], sid)
  end
end
if #entries < max then
  local r = redis.call('XREADGROUP', 'GROUP', 'isola', ARGV[4], 'COUNT', max - #entries, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do table.insert(entries, e) end
  end
end
local out = {}
for _, e in ipairs(entries) do
  local sid = e[1]
  local id = e[2][2]
  local mk = ARGV[1] .. 'm:' .. id
  if redis.call('EXISTS', mk) == 1 then
    local attempts = redis.call('HINCRBY', mk, 'a', 1)
    local v = redis.call('HMGET', mk, 'b', 'c', 't')
    redis.call('ZADD', KEYS[3], deadline, sid)
    table.insert(out, {id, v[1], v[2], v[3], attempts})
  else
    redis.call('XACK', KEYS[1], 'isola', sid)
    redis.call('XDEL', KEYS[1], sid)
    redis.call('ZREM', KEYS[3], sid)
  end
end
return out
";

/// KEYS: stream, delayed, leases. ARGV: prefix, ids...
const ACK: &str = r"
for i = 2, #ARGV do
  local mk = ARGV[1] .. 'm:' .. ARGV[i]
  unstream(KEYS[1], KEYS[3], mk)
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('DEL', mk)
end
return 1
";

/// KEYS: stream, delayed, leases. ARGV: prefix, id, delay_ms.
const RETRY: &str = r"
local mk = ARGV[1] .. 'm:' .. ARGV[2]
if redis.call('EXISTS', mk) == 0 then return 0 end
unstream(KEYS[1], KEYS[3], mk)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
return 1
";

/// KEYS: stream, delayed, leases, dead-letter stream. ARGV: prefix, id,
/// dead-letter prefix.
const DEAD_LETTER: &str = r"
local mk = ARGV[1] .. 'm:' .. ARGV[2]
if redis.call('EXISTS', mk) == 0 then return 0 end
unstream(KEYS[1], KEYS[3], mk)
redis.call('ZREM', KEYS[2], ARGV[2])
local nk = ARGV[3] .. 'm:' .. ARGV[2]
redis.call('RENAME', mk, nk)
ensure_group(KEYS[4])
local sid = redis.call('XADD', KEYS[4], '*', 'id', ARGV[2])
redis.call('HSET', nk, 's', sid)
return 1
";

/// KEYS: stream, delayed, leases. Milliseconds until the next message is
/// visible (0: now), -1 when the queue is empty.
const NEXT_VISIBLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pending = redis.call('XPENDING', KEYS[1], 'isola')
  if redis.call('XLEN', KEYS[1]) > pending[1] then return 0 end
end
local best = nil
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local at = tonumber(first[2])
    if best == nil or at < best then best = at end
  end
end
if best == nil then return -1 end
return math.max(0, best - now)
";

impl RedisQueues {
    /// Messages of `queue` delivered to some node and not yet acked,
    /// retried or dead-lettered (its leases, live or run out).
    pub async fn in_flight(&self, queue: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let count: u64 = redis::cmd("ZCARD")
            .arg(keys(queue).leases)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(count)
    }
}

impl RedisQueues {
    /// Run a script on a connection of the pool.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        invocation.invoke_async(&mut conn).await.map_err(redis_err)
    }
}

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}\n{body}"))
}

impl RedisQueues {
    pub fn new(conn: ConnectionManager) -> Self {
        RedisQueues {
            conn,
            send: script(SEND),
            lease: script(LEASE),
            ack: script(ACK),
            retry: script(RETRY),
            dead_letter: script(DEAD_LETTER),
            next_visible: script(NEXT_VISIBLE),
        }
    }
}

struct Keys {
    prefix: String,
    stream: String,
    delayed: String,
    leases: String,
}

impl Keys {
    /// `script` on this queue's stream, delayed set and leases (its KEYS
    /// 1-3) and key prefix (ARGV 1), for the scripts that take them all.
    fn invoke<'a>(&'a self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.stream);
        invocation
            .key(&self.delayed)
            .key(&self.leases)
            .arg(&self.prefix);
        invocation
    }
}

fn keys(queue: &str) -> Keys {
    let prefix = format!("isola:queue:{}:{queue}:", queue.len());
    Keys {
        stream: format!("{prefix}s"),
        delayed: format!("{prefix}d"),
        leases: format!("{prefix}l"),
        prefix,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// 128 random bits as 32 hex characters, like the embedded backend's ids.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| BindingError::Backend(format!("no randomness for a message id: {e}")))?;
    Ok(crate::util::hex(&bytes))
}

#[async_trait]
impl QueueStore for RedisQueues {
    async fn send(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<()> {
        validate(&messages)?;
        let k = keys(queue);
        let mut invocation = self.send.key(&k.stream);
        invocation.key(&k.delayed).arg(&k.prefix);
        for m in messages {
            invocation
                .arg(new_id()?)
                .arg(m.body)
                .arg(m.content_type)
                .arg(millis(m.delay));
        }
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    async fn lease(&self, queue: &str, max: usize, lease: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let k = keys(queue);
        let mut invocation = k.invoke(&self.lease);
        invocation
            .arg(max)
            .arg(millis(lease))
            .arg(crate::remote::node_id());
        let rows: Vec<(String, Vec<u8>, String, u64, u32)> = self.run(&invocation).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, body, content_type, timestamp_ms, attempts)| Delivery {
                    id,
                    body,
                    content_type,
                    timestamp_ms,
                    attempts,
                },
            )
            .collect())
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let k = keys(queue);
        let mut invocation = k.invoke(&self.ack);
        for id in ids {
            invocation.arg(id);
        }
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    async fn retry(&self, queue: &str, id: &str, delay: Duration) -> Result<()> {
        let k = keys(queue);
        let mut invocation = k.invoke(&self.retry);
        invocation.arg(id).arg(millis(delay));
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    async fn dead_letter(&self, queue: &str, id: &str, dead_letter_queue: &str) -> Result<()> {
        let (k, dlq) = (keys(queue), keys(dead_letter_queue));
        let mut invocation = k.invoke(&self.dead_letter);
        invocation.key(&dlq.stream).arg(id).arg(&dlq.prefix);
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        let k = keys(queue);
        let mut conn = self.conn.clone();
        let (stream, delayed): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&k.stream)
            .cmd("ZCARD")
            .arg(&k.delayed)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(stream + delayed)
    }

    async fn next_visible(&self, queue: &str) -> Result<Option<SystemTime>> {
        let k = keys(queue);
        let mut invocation = self.next_visible.key(&k.stream);
        invocation.key(&k.delayed).key(&k.leases);
        let wait: i64 = self.run(&invocation).await?;
        Ok(u64::try_from(wait)
            .ok()
            .map(|ms| SystemTime::now() + Duration::from_millis(ms)))
    }

    /// Nothing to do: leases belong to nodes that may still be running;
    /// those of a dead node run out and are claimed by the others.
    async fn release_all_leases(&self) -> Result<u64> {
        Ok(0)
    }
}
