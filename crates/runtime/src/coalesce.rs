//! Small responses in one piece.
//!
//! A guest sets its response head, then writes the body, then finishes it.
//! Handed over as soon as the head is set, hyper writes the head alone and
//! then each body chunk and the closing chunk as they come: three TCP
//! segments (and three wake-ups of the client) for a hello. Most guests
//! finish a small body right after the head, so we give the guest task a
//! few scheduler turns, take the body it writes meanwhile, and when that is
//! the whole body hand hyper a complete one: it then sends a
//! `content-length` response in a single write. A body still being written
//! after that (two turns without progress, 8 turns or 64 KiB at most) keeps
//! streaming; nothing here waits on a timer or on the guest's I/O.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::Body;

/// Gather at most this much before streaming the rest.
const MAX_GATHERED: usize = 64 * 1024;
/// And for at most this many scheduler turns, so a guest that trickles
/// small chunks without pause is not held back for long.
const MAX_TURNS: u32 = 8;

/// `response` with the body frames the guest has already produced taken
/// out of the channel: as one complete body if that is all of it, else put
/// back in front of the rest.
pub(crate) async fn coalesce(response: http::Response<Body>) -> http::Response<Body> {
    if response.body().is_end_stream() {
        return response;
    }
    let (parts, mut body) = response.into_parts();
    let mut gathered = VecDeque::new();
    let mut size = 0;
    // Turns of the scheduler let the guest task (spawned on this runtime)
    // write; its flushes wait for us to take each chunk, so keep taking
    // while it makes progress, and stop after two turns without any.
    let mut turns_without_progress = 0;
    'turns: for _ in 0..MAX_TURNS {
        if turns_without_progress >= 2 {
            break;
        }
        tokio::task::yield_now().await;
        turns_without_progress += 1;
        loop {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => {
                    return http::Response::from_parts(parts, complete(gathered, size));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    turns_without_progress = 0;
                    if let Some(data) = frame.data_ref() {
                        size += data.len();
                    }
                    gathered.push_back(frame);
                    if size > MAX_GATHERED {
                        break 'turns;
                    }
                }
                // An error is the rest's to report, in order.
                Poll::Ready(Some(Err(e))) => {
                    let rest = futures_util::stream::once(async move { Err(e) });
                    let body = Prefixed {
                        gathered,
                        rest: http_body_util::StreamBody::new(rest).boxed_unsync(),
                    };
                    return http::Response::from_parts(parts, body.boxed_unsync());
                }
                Poll::Pending => break,
            }
        }
    }
    if gathered.is_empty() {
        return http::Response::from_parts(parts, body);
    }
    http::Response::from_parts(
        parts,
        Prefixed {
            gathered,
            rest: body,
        }
        .boxed_unsync(),
    )
}

/// The whole body, from its frames: one data buffer (trailers, if any,
/// after it).
fn complete(frames: VecDeque<Frame<Bytes>>, size: usize) -> Body {
    let mut data = BytesMut::with_capacity(size);
    let mut trailers = None;
    for frame in frames {
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let data = data.freeze();
    match trailers {
        None => crate::body::full_body(data),
        Some(trailers) => {
            let frames = [Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        }
    }
}

/// Frames already taken from `rest`, then `rest`.
struct Prefixed {
    gathered: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.gathered.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.gathered.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let gathered: u64 = self
            .gathered
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + gathered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + gathered);
        }
        hint
    }
}
