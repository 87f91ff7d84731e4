//! Queues: durable messages for producers (`send`, `send_batch`) and the
//! primitives a consumer loop needs (lease, ack, retry, dead-letter).
//! Backends: [`sqlite`] (embedded, one file, `queues.sqlite`) and
//! [`redis`] (Redis Streams, shared by every node).
//!
//! Delivery is at least once: a leased message that is neither acked nor
//! retried before its lease ends (a crash, a hung consumer) is delivered
//! again.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{BindingError, Result};

pub mod redis;
pub mod sqlite;

/// Largest message body, as in Workers.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Most messages in one `send_batch`, as in Workers.
pub const MAX_BATCH_MESSAGES: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub body: Vec<u8>,
    pub content_type: String,
    /// Not visible to consumers before this has passed.
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Deliveries so far, this one included.
    pub attempts: u32,
}

#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Store all messages or none (validated by [`validate`]).
    async fn send(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<()>;
    /// Take up to `max` visible messages, oldest first, hiding them for
    /// `lease`; each one's `attempts` goes up by one.
    async fn lease(&self, queue: &str, max: usize, lease: Duration) -> Result<Vec<Delivery>>;
    /// Remove acked messages.
    async fn ack(&self, queue: &str, ids: &[String]) -> Result<()>;
    /// Make a message visible again after `delay`.
    async fn retry(&self, queue: &str, id: &str, delay: Duration) -> Result<()>;
    /// Move a message to `dead_letter_queue`, keeping its attempts, visible
    /// there at once.
    async fn dead_letter(&self, queue: &str, id: &str, dead_letter_queue: &str) -> Result<()>;
    /// Messages stored for `queue`, leased or not.
    async fn depth(&self, queue: &str) -> Result<u64>;
    /// When the next message of `queue` becomes visible (now if one is), or
    /// `None` when the queue is empty. Consumers sleep until then.
    async fn next_visible(&self, queue: &str) -> Result<Option<std::time::SystemTime>>;
    /// At start-up of a single-node host: every lease belongs to a process
    /// that is gone, so make those messages visible now. Returns how many.
    async fn release_all_leases(&self) -> Result<u64>;
}

/// Check a batch against Workers' limits (size per message, batch length).
pub fn validate(messages: &[OutgoingMessage]) -> Result<()> {
    if messages.is_empty() {
        return Err(invalid(
            "a batch holds at least 1 message; this one is empty".into(),
        ));
    }
    if messages.len() > MAX_BATCH_MESSAGES {
        return Err(invalid(format!(
            "a batch holds at most {MAX_BATCH_MESSAGES} messages; this one has {}",
            messages.len()
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        if m.body.len() > MAX_MESSAGE_BYTES {
            return Err(invalid(format!(
                "queue message {i} is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                m.body.len()
            )));
        }
        if m.content_type.is_empty() {
            return Err(invalid(format!(
                "queue message {i} has an empty content type"
            )));
        }
    }
    Ok(())
}

fn invalid(message: String) -> BindingError {
    BindingError::Invalid(message)
}

#[cfg(test)]
mod tests;
