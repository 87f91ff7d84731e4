//! Queues: send messages to a queue bound in `queues.producers`, and
//! consume them with a `#[isola_sdk::queue]` handler (`queues.consumers`).
//!
//! ```ignore
//! let jobs = env.queue("JOBS")?;
//! jobs.send_json(&serde_json::json!({ "id": 7 })).await?;
//! jobs.send_text("hello").await?;
//! jobs.send(bytes, QueueSendOptions::new().delay_seconds(30)).await?;
//! jobs.send_batch(vec![QueueMessage::text("a"), QueueMessage::text("b")]).await?;
//! ```
//!
//! ```ignore
//! #[isola_sdk::queue]
//! async fn queue(batch: MessageBatch, env: Env, _ctx: Ctx) -> Result<()> {
//!     for message in &batch.messages {
//!         match message.text() {
//!             Ok(text) if text == "later" => message.retry_with_delay(60),
//!             _ => message.ack(),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! As in Workers, an explicit [`Message::ack`] / [`Message::retry`] wins
//! (the first call on a message counts), then [`MessageBatch::ack_all`] /
//! [`MessageBatch::retry_all`]; any message still undecided is acked when
//! the handler returns `Ok` and retried when it returns `Err`. A panic
//! retries the whole batch.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::Result;
use crate::bindings::isola::worker::queue as wit;
use crate::error::check;

/// A queue producer; see [`Env::queue`](crate::Env::queue).
pub struct Queue {
    producer: wit::Producer,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn open(binding: &str) -> Result<Self> {
        Ok(Queue {
            producer: check(wit::Producer::open(binding))?,
        })
    }

    /// Send one message. It is durable once this returns. Without a
    /// content type the host records `application/octet-stream`.
    pub async fn send(&self, body: impl AsRef<[u8]>, options: QueueSendOptions) -> Result<()> {
        check(self.producer.send(body.as_ref(), &options.into_wit()))
    }

    /// Send a value serialized as JSON (`application/json`).
    #[cfg(feature = "json")]
    pub async fn send_json<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.send_json_with(value, QueueSendOptions::new()).await
    }

    /// Send a value serialized as JSON with a delay; the content type is
    /// `application/json` unless `options` names another.
    #[cfg(feature = "json")]
    pub async fn send_json_with<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        options: QueueSendOptions,
    ) -> Result<()> {
        let message = QueueMessage::json(value)?.with_options(options);
        self.send(&message.body, message.options).await
    }

    /// Send text (`text/plain; charset=utf-8`).
    pub async fn send_text(&self, text: &str) -> Result<()> {
        let message = QueueMessage::text(text);
        self.send(&message.body, message.options).await
    }

    /// Send up to 100 messages at once: all of them or none.
    pub async fn send_batch(&self, messages: Vec<QueueMessage>) -> Result<()> {
        let messages: Vec<wit::OutgoingMessage> = messages
            .into_iter()
            .map(|message| wit::OutgoingMessage {
                body: message.body,
                options: message.options.into_wit(),
            })
            .collect();
        check(self.producer.send_batch(&messages))
    }
}

/// How a message is sent. Build one with struct syntax or the builder
/// methods: `QueueSendOptions::new().delay_seconds(30)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSendOptions {
    /// A MIME type; the host records `application/octet-stream` without one.
    pub content_type: Option<String>,
    /// Hold the message back this long before a consumer may see it.
    pub delay_seconds: Option<u32>,
}

impl QueueSendOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    pub fn delay_seconds(mut self, seconds: u32) -> Self {
        self.delay_seconds = Some(seconds);
        self
    }

    fn into_wit(self) -> wit::SendOptions {
        wit::SendOptions {
            content_type: self.content_type,
            delay_seconds: self.delay_seconds,
        }
    }
}

/// One message of a [`Queue::send_batch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueMessage {
    pub body: Vec<u8>,
    pub options: QueueSendOptions,
}

impl QueueMessage {
    /// A message with these bytes as its body.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        QueueMessage {
            body: body.into(),
            options: QueueSendOptions::default(),
        }
    }

    /// A `text/plain; charset=utf-8` message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(text.into()).content_type("text/plain; charset=utf-8")
    }

    /// An `application/json` message.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::new(serde_json::to_vec(value)?).content_type("application/json"))
    }

    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.options.content_type = Some(content_type.into());
        self
    }

    pub fn delay_seconds(mut self, seconds: u32) -> Self {
        self.options.delay_seconds = Some(seconds);
        self
    }

    /// Apply `options`; fields it leaves `None` keep their value.
    pub fn with_options(mut self, options: QueueSendOptions) -> Self {
        if options.content_type.is_some() {
            self.options.content_type = options.content_type;
        }
        if options.delay_seconds.is_some() {
            self.options.delay_seconds = options.delay_seconds;
        }
        self
    }
}

/// What happens to a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ack,
    /// Deliver again after this many seconds, or the consumer's backoff.
    Retry(Option<u32>),
}

/// The decisions taken on a batch, shared by the batch and its messages.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    all: Option<Outcome>,
    each: Vec<Option<Outcome>>,
}

impl Decisions {
    /// One outcome per message: the message's own, else the batch's, else
    /// ack when the handler succeeded and retry when it failed.
    pub(crate) fn resolve(&self, handler_ok: bool) -> Vec<Outcome> {
        let fallback = if handler_ok {
            Outcome::Ack
        } else {
            Outcome::Retry(None)
        };
        self.each
            .iter()
            .map(|own| own.or(self.all).unwrap_or(fallback))
            .collect()
    }
}

/// The messages delivered to a `#[isola_sdk::queue]` handler in one call.
#[derive(Debug)]
pub struct MessageBatch {
    /// The name of the queue, as configured.
    pub queue: String,
    pub messages: Vec<Message>,
    decisions: Rc<RefCell<Decisions>>,
}

impl MessageBatch {
    pub(crate) fn new(queue: String, messages: Vec<IncomingMessage>) -> Self {
        let decisions = Rc::new(RefCell::new(Decisions {
            all: None,
            each: vec![None; messages.len()],
        }));
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(index, m)| Message {
                id: m.id,
                body: m.body,
                content_type: m.content_type,
                timestamp: m.timestamp,
                attempts: m.attempts,
                index,
                decisions: decisions.clone(),
            })
            .collect();
        MessageBatch {
            queue,
            messages,
            decisions,
        }
    }

    pub(crate) fn decisions(&self) -> Rc<RefCell<Decisions>> {
        self.decisions.clone()
    }

    /// Acknowledge every message not acked or retried on its own. Only the
    /// first of `ack_all` / `retry_all` counts.
    pub fn ack_all(&self) {
        let mut decisions = self.decisions.borrow_mut();
        decisions.all.get_or_insert(Outcome::Ack);
    }

    /// Retry every message not acked or retried on its own.
    pub fn retry_all(&self) {
        self.decisions
            .borrow_mut()
            .all
            .get_or_insert(Outcome::Retry(None));
    }

    /// Retry every message not acked or retried on its own, after `seconds`.
    pub fn retry_all_with_delay(&self, seconds: u32) {
        self.decisions
            .borrow_mut()
            .all
            .get_or_insert(Outcome::Retry(Some(seconds)));
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A message as the host delivers it.
pub(crate) struct IncomingMessage {
    pub(crate) id: String,
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) timestamp: u64,
    pub(crate) attempts: u32,
}

/// One delivered message.
pub struct Message {
    /// Unique per message, the same on every delivery.
    pub id: String,
    pub body: Vec<u8>,
    /// As sent (`application/octet-stream` when the sender named none).
    pub content_type: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Deliveries so far, this one included (1 on the first).
    pub attempts: u32,
    index: usize,
    decisions: Rc<RefCell<Decisions>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("timestamp", &self.timestamp)
            .field("attempts", &self.attempts)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Message {
    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<String> {
        Ok(String::from_utf8(self.body.clone())?)
    }

    /// The body parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Mark the message done, whatever the handler returns. Only the first
    /// `ack` / `retry` of a message counts.
    pub fn ack(&self) {
        self.decide(Outcome::Ack);
    }

    /// Deliver the message again (after the consumer's backoff), whatever
    /// the handler returns. It counts as an attempt: past `max_retries` the
    /// message goes to the dead-letter queue, if there is one.
    pub fn retry(&self) {
        self.decide(Outcome::Retry(None));
    }

    /// Deliver the message again after `seconds`.
    pub fn retry_with_delay(&self, seconds: u32) {
        self.decide(Outcome::Retry(Some(seconds)));
    }

    fn decide(&self, outcome: Outcome) {
        let mut decisions = self.decisions.borrow_mut();
        if let Some(slot) = decisions.each.get_mut(self.index) {
            slot.get_or_insert(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> MessageBatch {
        let messages = (0..n)
            .map(|i| IncomingMessage {
                id: format!("m{i}"),
                body: format!("{i}").into_bytes(),
                content_type: "text/plain".into(),
                timestamp: 0,
                attempts: 1,
            })
            .collect();
        MessageBatch::new("q".into(), messages)
    }

    #[test]
    fn handler_result_decides_the_rest() {
        let batch = batch(3);
        batch.messages[0].retry();
        batch.messages[1].ack();
        let decisions = batch.decisions();
        let ok = decisions.borrow().resolve(true);
        assert_eq!(ok, [Outcome::Retry(None), Outcome::Ack, Outcome::Ack]);
        let err = decisions.borrow().resolve(false);
        assert_eq!(
            err,
            [Outcome::Retry(None), Outcome::Ack, Outcome::Retry(None)]
        );
    }

    #[test]
    fn explicit_calls_win_and_the_first_counts() {
        let batch = batch(3);
        batch.messages[0].retry_with_delay(5);
        batch.messages[0].ack();
        batch.retry_all();
        batch.ack_all();
        batch.messages[2].ack();
        let outcomes = batch.decisions().borrow().resolve(true);
        assert_eq!(
            outcomes,
            [Outcome::Retry(Some(5)), Outcome::Retry(None), Outcome::Ack]
        );
    }
}
