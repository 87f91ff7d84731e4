//! The optional handlers: `#[isola_sdk::scheduled]` and
//! `#[isola_sdk::queue]`.
//!
//! Their bindings are generated here with `pub_export_macro`, which makes
//! wit-bindgen keep each world's exports out of this crate's component-type
//! section: the exports (the core functions and a section declaring them)
//! only appear in a guest whose code invokes the export macro, which the
//! attributes do. A fetch-only guest therefore exports neither interface.

use crate::queue::{IncomingMessage, MessageBatch};
use crate::{Ctx, Env, Result, block_on, run_background};
use std::future::Future;

pub mod scheduled_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "isola:worker/scheduled-handler",
        pub_export_macro: true,
        export_macro_name: "export_scheduled",
        default_bindings_module: "::isola_sdk::__private::scheduled_bindings",
    });
}

pub mod queue_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "isola:worker/queue-handler",
        pub_export_macro: true,
        export_macro_name: "export_queue",
        default_bindings_module: "::isola_sdk::__private::queue_bindings",
    });
}

pub use queue_bindings::exports::isola::worker::queue_consumer::{
    Guest as QueueGuest, MessageBatch as WitMessageBatch, Outcome as WitOutcome,
};
pub use scheduled_bindings::exports::isola::worker::scheduled::{
    Guest as ScheduledGuest, ScheduledEvent as WitScheduledEvent,
};

/// A cron trigger firing, given to a `#[isola_sdk::scheduled]` handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledEvent {
    /// The cron expression that fired, as configured.
    pub cron: String,
    /// When it was due, in milliseconds since the Unix epoch.
    pub scheduled_time: u64,
}

/// Run a `scheduled` handler for one firing, then its `wait_until` work.
/// An error is logged with its chain and becomes the WIT `err`.
pub fn run_scheduled<F, Fut>(event: WitScheduledEvent, handler: F) -> Result<(), String>
where
    F: FnOnce(ScheduledEvent, Env, Ctx) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let event = ScheduledEvent {
        cron: event.cron,
        scheduled_time: event.scheduled_time,
    };
    let result = block_on(handler(event, Env::default(), Ctx::default()));
    run_background();
    result.map_err(|error| {
        eprintln!("scheduled handler failed: {error:?}");
        format!("{error:#}")
    })
}

/// Run a `queue` handler for one batch, then its `wait_until` work, and
/// answer each message in order.
pub fn run_queue<F, Fut>(batch: WitMessageBatch, handler: F) -> Vec<WitOutcome>
where
    F: FnOnce(MessageBatch, Env, Ctx) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let messages = batch
        .messages
        .into_iter()
        .map(|m| IncomingMessage {
            id: m.id,
            body: m.body,
            content_type: m.content_type,
            timestamp: m.timestamp,
            attempts: m.attempts,
        })
        .collect();
    let batch = MessageBatch::new(batch.queue, messages);
    let decisions = batch.decisions();
    let result = block_on(handler(batch, Env::default(), Ctx::default()));
    run_background();
    if let Err(error) = &result {
        eprintln!("queue handler failed: {error:?}");
    }
    let outcomes = decisions.borrow().resolve(result.is_ok());
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            crate::queue::Outcome::Ack => WitOutcome::Ack,
            crate::queue::Outcome::Retry(delay) => WitOutcome::Retry(delay),
        })
        .collect()
}
