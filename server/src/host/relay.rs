//! A waker of the host's own for host futures and streams that an app polls with a waker of its
//! own.
//!
//! An app that polls a host future (a fetch, a body stream) with the context its request was
//! polled with hands the host its own task's waker back (see `berth_app::ffi`'s *Futures and
//! wakers*): nothing to do. An app that runs its own combinators with wakers of their own (a
//! `FuturesUnordered`, say) hands over a waker of the plugin's, whose every clone goes through
//! both sides of the boundary and allocates on each, and whose identity is new at each poll.
//! hyper, tokio and the pool clone the waker they are given several times per fetch (channel,
//! pool checkout, timer, body). For that case [`Relayed`] gives them a waker of the host's own,
//! whose clones are reference counts, and passes its wake-ups on to the app's waker, cloned once
//! per poll that returns `Pending`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Where the host's waker sends wake-ups: the waker of whoever polled last.
#[derive(Debug, Default)]
struct Relay {
    /// Set by every wake-up; cleared before each poll of the inner future.
    woken: AtomicBool,
    target: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.target.wake();
    }
}

pin_project_lite::pin_project! {
    /// `inner` polled with the host's waker when the app's is not; see the module documentation.
    /// `relay` and its waker are made at the first poll with a waker of the app's; `relay_all`
    /// relays every waker, the host's too (for the tests, whose wakers are all the host's).
    #[derive(Debug)]
    pub struct Relayed<T> {
        #[pin]
        inner: T,
        relay: Option<(Arc<Relay>, Waker)>,
        relay_all: bool,
    }
}

impl<T> Relayed<T> {
    /// Wraps a host future or stream that an app is going to poll.
    pub fn new(inner: T) -> Self {
        Relayed {
            inner,
            relay: None,
            relay_all: false,
        }
    }

    fn relay_poll<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let this = self.project();
        if !*this.relay_all && !berth_app::ffi::is_foreign_waker(cx.waker()) {
            return poll(this.inner, cx);
        }
        let (relay, waker) = this.relay.get_or_insert_with(|| {
            let relay = Arc::new(Relay::default());
            (Arc::clone(&relay), Waker::from(relay))
        });
        relay.woken.store(false, Ordering::SeqCst);
        let result = poll(this.inner, &mut Context::from_waker(waker));
        if result.is_pending() {
            // Registered only now, so a poll that finishes clones nothing. A wake-up that came
            // between the inner poll and this registration found no target: `woken` tells.
            relay.target.register(cx.waker());
            if relay.woken.load(Ordering::SeqCst) {
                cx.waker().wake_by_ref();
            }
        }
        result
    }
}

impl<F: Future> Future for Relayed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.relay_poll(cx, |inner, cx| inner.poll(cx))
    }
}

impl<S: futures_util::Stream> futures_util::Stream for Relayed<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.relay_poll(cx, |inner, cx| inner.poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn relaying_every_waker<T>(inner: T) -> Relayed<T> {
        Relayed {
            relay_all: true,
            ..Relayed::new(inner)
        }
    }

    /// A waker that counts its wake-ups and its clones.
    #[derive(Default)]
    struct Counting {
        wakes: AtomicUsize,
    }

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_reaches_the_last_poller_only() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut relayed = Box::pin(relaying_every_waker(rx));
        let first = Arc::new(Counting::default());
        let second = Arc::new(Counting::default());
        let first_waker = Waker::from(Arc::clone(&first));
        let second_waker = Waker::from(Arc::clone(&second));
        assert!(
            relayed
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // Moved to another task, as in a `FuturesUnordered` or a spawned future.
        assert!(
            relayed
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        tx.send(7).expect("receiver alive");
        assert_eq!(first.wakes.load(Ordering::SeqCst), 0);
        assert_eq!(second.wakes.load(Ordering::SeqCst), 1);
        let done = relayed
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker));
        assert_eq!(done, Poll::Ready(Ok(7)));
    }

    #[test]
    fn a_wake_up_during_the_inner_poll_is_not_lost() {
        /// Wakes its waker while being polled, then is pending once.
        struct WakesWhilePolled(bool);
        impl Future for WakesWhilePolled {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.0 {
                    return Poll::Ready(());
                }
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let mut relayed = Box::pin(relaying_every_waker(WakesWhilePolled(false)));
        let outer = Arc::new(Counting::default());
        let waker = Waker::from(Arc::clone(&outer));
        let mut cx = Context::from_waker(&waker);
        assert!(relayed.as_mut().poll(&mut cx).is_pending());
        assert_eq!(outer.wakes.load(Ordering::SeqCst), 1, "woken at once");
        assert!(relayed.as_mut().poll(&mut cx).is_ready());
    }
}
