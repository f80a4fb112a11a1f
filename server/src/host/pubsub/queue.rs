//! One subscriber's queue: bounded, filled by the channel's fan-out without ever waiting, and
//! emptied by the subscriber's polls.
//!
//! The fan-out never blocks on a subscriber: a full queue either drops its oldest message
//! (counted, and reported with the next message the subscriber reads) or ends, freeing what it
//! held, so one subscriber's memory is at most `capacity` messages whatever it does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::Overflow;

/// What the subscriber reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A message, and how many were dropped before it since the last one read.
    Message {
        /// The payload, shared with every other subscriber of the channel.
        data: Bytes,
        /// Messages dropped (drop-oldest) since the last one read.
        dropped: u64,
    },
    /// The subscription ended; every later poll says so again.
    End {
        /// Why, for the app.
        reason: Arc<str>,
        /// Messages dropped since the last one read (all that were queued, under `close`).
        dropped: u64,
    },
}

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued.
    Queued,
    /// Queued, after dropping the oldest message (`drop-oldest`).
    DroppedOldest,
    /// The queue was full under `close`: it dropped this many messages (those it held and this
    /// one), takes no more, and must be ended with [`Queue::end`].
    Overflowed(u64),
    /// The queue had ended (or overflowed) already: nothing done.
    Ended,
}

/// A bounded queue of messages for one subscriber.
#[derive(Debug)]
pub(super) struct Queue {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    messages: VecDeque<Bytes>,
    /// Dropped since the last message read.
    dropped: u64,
    /// Set once the queue ends.
    end: Option<Arc<str>>,
    /// Set when it overflowed under `close`: it takes no more, and is about to end.
    closing: bool,
    /// The subscriber's waker, while it waits.
    waker: Option<Waker>,
}

impl Queue {
    /// An empty queue of at most `capacity` (at least 1) messages.
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `message`, applying `overflow` when full, and wakes the subscriber. Never waits.
    pub(super) fn push(&self, message: Bytes, overflow: Overflow) -> Pushed {
        let (pushed, waker) = {
            let mut state = self.lock();
            if state.end.is_some() || state.closing {
                return Pushed::Ended;
            }
            let pushed = if state.messages.len() < self.capacity {
                state.messages.push_back(message);
                Pushed::Queued
            } else {
                match overflow {
                    Overflow::DropOldest => {
                        state.messages.pop_front();
                        state.messages.push_back(message);
                        state.dropped += 1;
                        Pushed::DroppedOldest
                    }
                    Overflow::Close => {
                        let lost = state.messages.len() as u64 + 1;
                        // Free what it held now: the subscriber may never poll again. The end
                        // itself comes with `end`, once the caller has closed the subscriber's
                        // WebSocket: an app that saw the end first might close it itself, with
                        // another code.
                        state.messages = VecDeque::new();
                        state.dropped += lost;
                        state.closing = true;
                        return Pushed::Overflowed(lost);
                    }
                }
            };
            (pushed, state.waker.take())
        };
        // Woken outside the lock: the waker may poll at once on another thread.
        if let Some(waker) = waker {
            waker.wake();
        }
        pushed
    }

    /// Ends the queue with `reason` (unless it has ended already), dropping nothing it holds:
    /// the subscriber still reads what is queued, then the end.
    pub(super) fn end(&self, reason: &str) {
        let waker = {
            let mut state = self.lock();
            if state.end.is_none() {
                state.end = Some(Arc::from(reason));
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next message or the end; otherwise registers `cx`'s waker.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = self.lock();
        if let Some(data) = state.messages.pop_front() {
            let dropped = std::mem::take(&mut state.dropped);
            return Poll::Ready(Next::Message { data, dropped });
        }
        if let Some(reason) = &state.end {
            let reason = Arc::clone(reason);
            let dropped = std::mem::take(&mut state.dropped);
            return Poll::Ready(Next::End { reason, dropped });
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// How many messages are queued.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(queue: &Queue) -> Poll<Next> {
        let mut cx = Context::from_waker(Waker::noop());
        queue.poll_next(&mut cx)
    }

    fn message(text: &'static str, dropped: u64) -> Poll<Next> {
        Poll::Ready(Next::Message {
            data: Bytes::from_static(text.as_bytes()),
            dropped,
        })
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let queue = Queue::new(2);
        for text in ["a", "b", "c", "d"] {
            queue.push(Bytes::from_static(text.as_bytes()), Overflow::DropOldest);
        }
        assert_eq!(queue.len(), 2);
        assert_eq!(poll(&queue), message("c", 2));
        assert_eq!(poll(&queue), message("d", 0));
        assert_eq!(poll(&queue), Poll::Pending);
    }

    #[test]
    fn close_frees_the_backlog_at_once_and_ends_when_told() {
        let queue = Queue::new(2);
        let push =
            |text: &'static str| queue.push(Bytes::from_static(text.as_bytes()), Overflow::Close);
        assert_eq!(push("a"), Pushed::Queued);
        assert_eq!(push("b"), Pushed::Queued);
        assert_eq!(push("c"), Pushed::Overflowed(3));
        assert_eq!(push("d"), Pushed::Ended);
        assert_eq!(queue.len(), 0);
        // Nothing to read until the broker ends it (after closing the subscriber's socket).
        assert_eq!(poll(&queue), Poll::Pending);
        queue.end("fell behind");
        let end = Poll::Ready(Next::End {
            reason: Arc::from("fell behind"),
            dropped: 3,
        });
        assert_eq!(poll(&queue), end);
        // Every later poll ends again.
        assert!(matches!(
            poll(&queue),
            Poll::Ready(Next::End { dropped: 0, .. })
        ));
    }

    #[test]
    fn end_delivers_what_is_queued_first() {
        let queue = Queue::new(4);
        queue.push(Bytes::from_static(b"a"), Overflow::DropOldest);
        queue.end("retired");
        assert_eq!(poll(&queue), message("a", 0));
        assert!(matches!(poll(&queue), Poll::Ready(Next::End { .. })));
    }

    #[test]
    fn a_push_wakes_the_waiting_subscriber() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let queue = Queue::new(1);
        assert_eq!(
            queue.poll_next(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        queue.push(Bytes::from_static(b"a"), Overflow::DropOldest);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
    }
}
