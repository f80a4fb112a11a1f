//! Pub/sub across the boundary (ABI 1.5): the outcomes both sides build and read — a
//! subscribe's, a publish's, a subscription poll's — and the plugin's side of an open
//! subscription ([`RawSubscription`]) and of a subscribe or publish in flight
//! ([`HostSubscribe`], [`HostPublish`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::abi::*;
use crate::ffi::future::{ContextExt, Panicked};

/// What a subscription delivers besides "not yet".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubEvent {
    /// A published payload.
    Message(Bytes),
    /// The subscription ended, and why.
    End(String),
}

impl AbiSubscription {
    /// No subscription (in a failed outcome).
    pub const fn none() -> Self {
        AbiSubscription {
            state: std::ptr::null_mut(),
            vtable: std::ptr::null(),
        }
    }
}

impl AbiSubscribeOutcome {
    /// An open subscription.
    pub fn ok(subscription: AbiSubscription) -> Self {
        AbiSubscribeOutcome {
            tag: SUB_OK,
            subscription,
            message: AbiBuf::empty(),
        }
    }

    /// A failed subscribe: `tag` is [`SUB_INVALID`] or [`SUB_FAILED`].
    pub fn failed(tag: u32, message: String) -> Self {
        AbiSubscribeOutcome {
            tag,
            subscription: AbiSubscription::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome: the subscription, or the failure's tag and
    /// reason. A subscription received with a failure tag is released here.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's contract for subscribe outcomes (an owned message; an
    /// owned subscription when its vtable is not null).
    pub unsafe fn into_result(self) -> Result<AbiSubscription, (u32, String)> {
        // SAFETY: the message is owned by us now (the caller's promise).
        let message = unsafe { self.message.into_string_lossy() };
        let subscription = self.subscription;
        let usable = !subscription.vtable.is_null() && !subscription.state.is_null();
        match self.tag {
            SUB_OK if usable => Ok(subscription),
            SUB_OK => Err((SUB_FAILED, "the host returned no subscription".to_owned())),
            tag => {
                if usable {
                    // SAFETY: an owned subscription, released once here since no one else has it.
                    unsafe { ((*subscription.vtable).drop)(subscription.state) };
                }
                Err((tag, message))
            }
        }
    }
}

impl AbiPublishOutcome {
    /// Published to `receivers` subscribers.
    pub fn ok(receivers: u64) -> Self {
        AbiPublishOutcome {
            tag: SUB_OK,
            receivers,
            message: AbiBuf::empty(),
        }
    }

    /// A failed publish: `tag` is [`SUB_INVALID`] or [`SUB_FAILED`].
    pub fn failed(tag: u32, message: String) -> Self {
        AbiPublishOutcome {
            tag,
            receivers: 0,
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome: the receiver count, or the failure's tag and
    /// reason.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's contract for publish outcomes (an owned message).
    pub unsafe fn into_result(self) -> Result<u64, (u32, String)> {
        // SAFETY: the message is owned by us now (the caller's promise).
        let message = unsafe { self.message.into_string_lossy() };
        match self.tag {
            SUB_OK => Ok(self.receivers),
            tag => Err((tag, message)),
        }
    }
}

impl AbiSubscriptionPoll {
    /// Nothing yet: the context's waker was registered.
    pub const fn pending() -> Self {
        AbiSubscriptionPoll {
            tag: SUB_PENDING,
            dropped: 0,
            data: AbiBuf::empty(),
        }
    }

    /// A message, after `dropped` others were dropped from the subscriber's queue.
    pub fn message(payload: Bytes, dropped: u64) -> Self {
        AbiSubscriptionPoll {
            tag: SUB_MESSAGE,
            dropped,
            data: AbiBuf::from_bytes(payload),
        }
    }

    /// The end of the subscription, and why.
    pub fn end(reason: String, dropped: u64) -> Self {
        AbiSubscriptionPoll {
            tag: SUB_END,
            dropped,
            data: AbiBuf::from_string(reason),
        }
    }
}

/// An open subscription, owned by the plugin: polled through `&mut self`, released (which
/// unsubscribes) through the host's `drop` exactly once, when dropped.
pub(crate) struct RawSubscription {
    raw: AbiSubscription,
    /// The host said [`SUB_END`]: do not poll again.
    ended: bool,
}

// SAFETY: a shared `&RawSubscription` can do nothing with the host's subscription: polling takes
// `&mut self` and releasing takes ownership (as for `FfiFuture`). Being `Sync` lets a future that
// borrows a `Subscription` across an `.await` be `Send`.
unsafe impl Sync for RawSubscription {}

impl RawSubscription {
    /// Takes ownership of a received subscription.
    ///
    /// # Safety
    /// `raw` must be an open subscription under the ABI's contract (non-null state and vtable,
    /// owned by the caller).
    unsafe fn from_abi(raw: AbiSubscription) -> Self {
        RawSubscription { raw, ended: false }
    }

    fn vtable(&self) -> &AbiSubscriptionVTable {
        // SAFETY: the subscription contract: a static in host code, non-null for an open
        // subscription (checked by `AbiSubscribeOutcome::into_result`).
        unsafe { &*self.raw.vtable }
    }

    /// The next event, with the count of messages dropped before it.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(u64, SubEvent)> {
        if self.ended {
            return Poll::Ready((0, SubEvent::End("the subscription has ended".to_owned())));
        }
        let (poll_next, state) = (self.vtable().poll_next, self.raw.state);
        // SAFETY: `state` is open and ours, polled by one call at a time (`&mut self`); the
        // context is valid for the call.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_next(state, fcx) });
        // SAFETY: the host's answer: its data is ours.
        let data = unsafe { polled.data.into_bytes() };
        match polled.tag {
            SUB_PENDING => Poll::Pending,
            SUB_MESSAGE => Poll::Ready((polled.dropped, SubEvent::Message(data))),
            SUB_END => {
                self.ended = true;
                let reason = String::from_utf8_lossy(&data).into_owned();
                Poll::Ready((polled.dropped, SubEvent::End(reason)))
            }
            other => {
                self.ended = true;
                let reason = format!("the host answered a subscription poll with tag {other}");
                Poll::Ready((polled.dropped, SubEvent::End(reason)))
            }
        }
    }
}

impl Drop for RawSubscription {
    fn drop(&mut self) {
        // SAFETY: we own the open subscription; it is released here exactly once.
        unsafe { (self.vtable().drop)(self.raw.state) }
    }
}

impl std::fmt::Debug for RawSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSubscription")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// What a pub/sub call of the host resolves to, and how the SDK takes it over.
pub(crate) trait HostOutcome: Sized {
    /// What the call gives on success.
    type Output;
    /// The call's name, for the errors of a host that panicked or a future polled twice.
    const CALL: &'static str;
    /// Takes the outcome over: the value, or the `SUB_*` failure and the host's reason.
    ///
    /// # Safety
    /// `self` is an outcome the host resolved, owned by the caller from now on.
    unsafe fn take(self) -> Result<Self::Output, (u32, String)>;
}

impl HostOutcome for AbiSubscribeOutcome {
    type Output = RawSubscription;
    const CALL: &'static str = "subscribe";
    unsafe fn take(self) -> Result<RawSubscription, (u32, String)> {
        // SAFETY: the caller's promise.
        let raw = unsafe { self.into_result() }?;
        // SAFETY: `into_result` hands out only open subscriptions, owned by us.
        Ok(unsafe { RawSubscription::from_abi(raw) })
    }
}

impl HostOutcome for AbiPublishOutcome {
    type Output = u64;
    const CALL: &'static str = "publish";
    unsafe fn take(self) -> Result<u64, (u32, String)> {
        // SAFETY: the caller's promise.
        unsafe { self.into_result() }
    }
}

/// A subscribe or publish in flight on the host; dropping it abandons it. It resolves to the
/// call's output, or to a `SUB_*` failure and the host's reason.
pub(crate) struct HostCall<O>(Option<Result<FfiFuture<O>, (u32, String)>>);

/// A subscribe in flight: it resolves to the open subscription.
pub(crate) type HostSubscribe = HostCall<AbiSubscribeOutcome>;
/// A publish in flight: it resolves to the number of receivers.
pub(crate) type HostPublish = HostCall<AbiPublishOutcome>;

impl<O: HostOutcome> HostCall<O> {
    pub(crate) fn pending(future: FfiFuture<O>) -> Self {
        HostCall(Some(Ok(future)))
    }

    /// A call that failed before reaching the host.
    pub(crate) fn failed(tag: u32, message: impl Into<String>) -> Self {
        HostCall(Some(Err((tag, message.into()))))
    }
}

impl<O: HostOutcome> Future for HostCall<O> {
    type Output = Result<O::Output, (u32, String)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.0.take() {
            Some(Ok(mut future)) => match future.poll_caught(cx) {
                Poll::Pending => {
                    self.0 = Some(Ok(future));
                    return Poll::Pending;
                }
                // SAFETY: the host's outcome, owned by us from now on.
                Poll::Ready(Ok(outcome)) => unsafe { outcome.take() },
                Poll::Ready(Err(Panicked)) => {
                    Err((SUB_FAILED, format!("the host's {} panicked", O::CALL)))
                }
            },
            Some(Err(failed)) => Err(failed),
            None => Err((SUB_FAILED, format!("{} polled after completion", O::CALL))),
        };
        Poll::Ready(result)
    }
}

impl<O: HostOutcome> std::fmt::Debug for HostCall<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostCall({})", O::CALL)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::ffi::future::IntoFfi as _;
    use crate::ffi::test_support::*;

    #[test]
    fn outcomes_round_trip() {
        // SAFETY: each outcome was made by this side's constructors just above.
        unsafe {
            assert_eq!(AbiPublishOutcome::ok(3).into_result(), Ok(3));
            assert_eq!(
                AbiPublishOutcome::failed(SUB_INVALID, "empty channel".to_owned()).into_result(),
                Err((SUB_INVALID, "empty channel".to_owned()))
            );
            let failed = AbiSubscribeOutcome::failed(SUB_FAILED, "redis is down".to_owned());
            assert_eq!(
                failed.into_result().map(|_| ()),
                Err((SUB_FAILED, "redis is down".to_owned()))
            );
            // An "ok" without a subscription is an error, not a null pointer handed on.
            let empty = AbiSubscribeOutcome::ok(AbiSubscription::none());
            assert!(empty.into_result().is_err());
        }
    }

    #[test]
    fn a_subscription_delivers_counts_drops_ends_and_is_released_once() {
        let (subscription, fake) = fake_subscription(["a", "b"], 2, "retired");
        let ready = std::future::ready(AbiSubscribeOutcome::ok(subscription)).into_ffi();
        let mut raw =
            futures_executor::block_on(HostSubscribe::pending(ready)).expect("subscribed");
        let mut cx = Context::from_waker(Waker::noop());
        let message = |text: &'static str| SubEvent::Message(Bytes::from_static(text.as_bytes()));
        assert_eq!(raw.poll_next(&mut cx), Poll::Ready((2, message("a"))));
        assert_eq!(raw.poll_next(&mut cx), Poll::Ready((0, message("b"))));
        assert_eq!(
            raw.poll_next(&mut cx),
            Poll::Ready((0, SubEvent::End("retired".to_owned())))
        );
        assert!(matches!(
            raw.poll_next(&mut cx),
            Poll::Ready((0, SubEvent::End(_)))
        ));
        assert_eq!(fake.polls(), 3, "not polled after the end");
        drop(raw);
        assert_eq!(fake.releases(), 1);
    }
}
