//! The keep-alive idle timeout, the request head timeout, and request tracking for one
//! connection.
//!
//! hyper has no idle timeout for keep-alive connections (hyper #2355), and its header read
//! timeout also runs while a kept-alive connection waits for its next request, cutting idle
//! connections at the header timeout. [`IdleIo`] does both jobs under hyper instead: a
//! connection with no request in flight and no bytes moving for the keep-alive timeout reads
//! as closed by the client, and hyper ends it cleanly; once the first byte of a request
//! arrives, the request head must be complete within the header timeout (bytes trickling in do
//! not extend it: slow-loris clients are cut off). A request in flight (a slow app, a long
//! stream) keeps its connection open whatever the timer says.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request ever began on the connection.
    begun: std::sync::atomic::AtomicBool,
}

impl Activity {
    /// Counts a request in until the guard is dropped (with its response body).
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.begun.store(true, Ordering::Relaxed);
        ActivityGuard(Arc::clone(self))
    }

    /// Whether a request ever began on the connection.
    pub fn begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// See [`Activity::begin`].
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project! {
    /// A response body that keeps its request counted in flight on its connection until it is
    /// finished or dropped.
    #[derive(Debug)]
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: ActivityGuard,
    }
}

impl<B> Tracked<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, guard: ActivityGuard) -> Self {
        Tracked { inner, guard }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's I/O that reads as end-of-stream once it has been idle (no request in
/// flight, no bytes either way) for the keep-alive timeout.
///
/// Activity only moves [`IdleIo::deadline`], which costs a clock read; the timer is armed at an
/// earlier or equal instant and, when it fires, re-armed at the deadline if that has moved on.
/// Moving a tokio timer on every read and write instead costs a trip through the timer wheel
/// each time, which showed up in the profile of a busy keep-alive connection.
#[derive(Debug)]
pub struct IdleIo<I> {
    io: I,
    activity: Arc<Activity>,
    keepalive: Duration,
    header_timeout: Duration,
    /// Bytes of a request have arrived and its head is not complete yet (no request in flight).
    reading_head: bool,
    /// When the connection times out unless something happens first.
    deadline: Instant,
    /// Fires at or before `deadline`.
    timer: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, while that poll still stands (it returned
    /// `Pending` and the timer has not moved since). The same task polling again need not
    /// poll the timer, only look whether it has fired, which skips a tokio timer poll's budget
    /// and waker bookkeeping on every read of a keep-alive connection.
    timer_waker: Option<std::task::Waker>,
}

impl<I> IdleIo<I> {
    /// Wraps `io`, counting requests through `activity`. The first request head must arrive
    /// by `first_head` (the connection's start plus the header timeout).
    pub fn new(
        io: I,
        activity: Arc<Activity>,
        keepalive: Duration,
        header_timeout: Duration,
        first_head: Instant,
    ) -> Self {
        let deadline = first_head;
        IdleIo {
            io,
            activity,
            keepalive,
            header_timeout,
            reading_head: true,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_waker: None,
        }
    }

    /// Moves the deadline; the timer only moves when it would otherwise fire too late.
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.timer.deadline() {
            self.timer.as_mut().reset(deadline);
            self.timer_waker = None;
        }
    }

    /// Bytes moved or a request is in flight: the connection gets a fresh keep-alive period,
    /// unless a request head is still being read (its deadline stands). A request in flight
    /// means its head is complete.
    fn touch(&mut self) {
        if self.activity.busy() {
            self.reading_head = false;
        }
        if !self.reading_head {
            self.set_deadline(Instant::now() + self.keepalive);
        }
    }
}

impl<I: Read + Unpin> Read for IdleIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            if !this.activity.busy() && !this.reading_head {
                // The first bytes of the next request: its head has a deadline.
                this.reading_head = true;
                this.set_deadline(Instant::now() + this.header_timeout);
            }
            return Poll::Ready(result);
        }
        let busy = this.activity.busy();
        if busy {
            this.touch();
        }
        // Always registered, so that a connection whose request has just finished is woken
        // when its keep-alive period ends.
        let registered = this
            .timer_waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if registered && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        this.timer_waker = None;
        while this.timer.as_mut().poll(cx).is_ready() {
            if this.deadline > this.timer.deadline() {
                // Activity moved the deadline since the timer was armed.
                let deadline = this.deadline;
                this.timer.as_mut().reset(deadline);
            } else if busy {
                this.touch();
                let deadline = this.deadline;
                this.timer.as_mut().reset(deadline);
            } else {
                // Idle too long, or a head too slow: end of stream, which hyper treats as the
                // client closing.
                return Poll::Ready(Ok(()));
            }
        }
        this.timer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<I: Write + Unpin> Write for IdleIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if written.is_ready() {
            this.touch();
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            this.touch();
        }
        written
    }
}
