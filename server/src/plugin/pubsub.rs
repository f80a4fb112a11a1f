//! The pub/sub side of the capability table (ABI 1.5): subscribing and publishing, and the
//! table of functions behind every [`AbiSubscription`] the host hands a plugin.
//!
//! Each subscription's `state` is a `Box<Subscription>` made by [`to_abi`] and freed by
//! [`drop`], which unsubscribes; the broker itself (`host::pubsub`) is safe code.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;
use std::task::Poll;

use berth_app::abi::*;
use berth_app::ffi::IntoFfi as _;

use crate::host::pubsub::{Next, PubSubError, Subscription};
use crate::plugin::RequestScope;

/// The table of every subscription the host hands to a plugin.
static SUBSCRIPTION_VTABLE: AbiSubscriptionVTable = AbiSubscriptionVTable {
    size: size_of::<AbiSubscriptionVTable>(),
    poll_next,
    drop,
};

/// Borrows the scope behind a `ctx` reference the plugin holds.
///
/// # Safety
/// `ctx` must be a live reference made by `Arc::into_raw` of a [`RequestScope`] (the host
/// contract).
unsafe fn scope<'a>(ctx: *mut c_void) -> &'a RequestScope {
    // SAFETY: forwarded to the caller.
    unsafe { &*ctx.cast::<RequestScope>() }
}

/// The `SUB_*` tag and message of a failure.
fn failure(error: &PubSubError) -> (u32, AbiBuf) {
    let tag = match error {
        PubSubError::Invalid(_) => SUB_INVALID,
        _ => SUB_FAILED,
    };
    (tag, AbiBuf::from_string(error.to_string()))
}

/// A subscribe outcome for the plugin: the subscription, handed over, or why not.
fn subscribe_outcome(result: Result<Subscription, PubSubError>) -> AbiSubscribeOutcome {
    match result {
        Ok(subscription) => AbiSubscribeOutcome {
            tag: SUB_OK,
            subscription: to_abi(subscription),
            message: AbiBuf::empty(),
        },
        Err(error) => {
            let (tag, message) = failure(&error);
            AbiSubscribeOutcome {
                tag,
                subscription: AbiSubscription {
                    state: std::ptr::null_mut(),
                    vtable: std::ptr::null(),
                },
                message,
            }
        }
    }
}

/// A publish outcome for the plugin.
fn publish_outcome(result: Result<u64, PubSubError>) -> AbiPublishOutcome {
    match result {
        Ok(receivers) => AbiPublishOutcome {
            tag: SUB_OK,
            receivers,
            message: AbiBuf::empty(),
        },
        Err(error) => {
            let (tag, message) = failure(&error);
            AbiPublishOutcome {
                tag,
                receivers: 0,
                message,
            }
        }
    }
}

/// Hands `subscription` over to the plugin, which frees it through the table's `drop`.
fn to_abi(subscription: Subscription) -> AbiSubscription {
    AbiSubscription {
        state: Box::into_raw(Box::new(subscription)).cast(),
        vtable: &SUBSCRIPTION_VTABLE,
    }
}

/// Reads the channel name, borrowed for the call, as UTF-8.
///
/// # Safety
/// `channel` is borrowed for the call (the host contract).
unsafe fn channel_name(channel: &AbiStr) -> Result<String, PubSubError> {
    // SAFETY: forwarded to the caller.
    let name = unsafe { channel.to_str("the channel name") };
    name.map(str::to_owned).map_err(|e| {
        PubSubError::Invalid(format!(
            "{e}: a channel name is 1 to {} bytes of UTF-8",
            crate::host::pubsub::MAX_CHANNEL_LEN
        ))
    })
}

berth_app::ffi_fn! {
    /// Subscribes the app to a channel. The subscription is registered before this returns;
    /// the future resolves once the upstream subscription is in place.
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds; `channel` is borrowed for
    /// the call.
    pub(super) unsafe fn subscribe(
        ctx: *mut c_void,
        channel: AbiStr,
    ) -> FfiFuture<AbiSubscribeOutcome> {
        // SAFETY: `ctx` is live and `channel` borrowed for this call (the host contract).
        let (scope, name) = unsafe { (scope(ctx), channel_name(&channel)) };
        let name = match name {
            Ok(name) => name,
            Err(error) => return std::future::ready(subscribe_outcome(Err(error))).into_ffi(),
        };
        let session = scope.session.as_ref().map(Arc::clone);
        let subscribing = scope.services.pubsub.subscribe(&name, session);
        futures_util::FutureExt::map(subscribing, subscribe_outcome).into_ffi()
    } ?= |panic| {
        let error = PubSubError::Failed(format!("the host panicked subscribing: {panic}"));
        std::future::ready(subscribe_outcome(Err(error))).into_ffi()
    }
}

berth_app::ffi_fn! {
    /// Publishes a message for the app.
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds; `channel` is borrowed for
    /// the call and `payload` moves to the host.
    pub(super) unsafe fn publish(
        ctx: *mut c_void,
        channel: AbiStr,
        payload: AbiBuf,
    ) -> FfiFuture<AbiPublishOutcome> {
        // SAFETY: `payload` moved to us and is released once, by these `Bytes` (shared with
        // every subscriber, without copying); `ctx` is live and `channel` borrowed for this
        // call (the host contract).
        let (payload, scope, name) =
            unsafe { (payload.into_bytes(), scope(ctx), channel_name(&channel)) };
        let name = match name {
            Ok(name) => name,
            Err(error) => return std::future::ready(publish_outcome(Err(error))).into_ffi(),
        };
        let services = &scope.services;
        let publishing = services.pubsub.publish(&name, payload, &services.runtime);
        futures_util::FutureExt::map(publishing, publish_outcome).into_ffi()
    } ?= |panic| {
        let error = PubSubError::Failed(format!("the host panicked publishing: {panic}"));
        std::future::ready(publish_outcome(Err(error))).into_ffi()
    }
}

berth_app::ffi_fn! {
    /// The subscription's next message or its end; otherwise registers the plugin's waker.
    ///
    /// # Safety
    /// The subscription contract: `state` is a live subscription made by [`to_abi`], not
    /// polled concurrently; `cx` is valid for the call.
    unsafe fn poll_next(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiSubscriptionPoll {
        // SAFETY: the caller's promise.
        let (subscription, cx) = unsafe { (&*state.cast::<Subscription>(), &mut *cx) };
        match cx.with_context(|cx| subscription.poll_next(cx)) {
            Poll::Pending => AbiSubscriptionPoll {
                tag: SUB_PENDING,
                dropped: 0,
                data: AbiBuf::empty(),
            },
            Poll::Ready(Next::Message { data, dropped }) => AbiSubscriptionPoll {
                tag: SUB_MESSAGE,
                dropped,
                data: AbiBuf::from_bytes(data),
            },
            Poll::Ready(Next::End { reason, dropped }) => AbiSubscriptionPoll {
                tag: SUB_END,
                dropped,
                data: AbiBuf::from_string(reason.to_string()),
            },
        }
    } ?= |panic| AbiSubscriptionPoll {
        tag: SUB_END,
        dropped: 0,
        data: AbiBuf::from_string(format!("the host panicked in a subscription: {panic}")),
    }
}

berth_app::ffi_fn! {
    /// Unsubscribes and frees the subscription; a destructor that panics leaks it instead.
    ///
    /// # Safety
    /// The subscription contract: `state` is live, dropped exactly once, by its owner.
    unsafe fn drop(state: *mut c_void) {
        // SAFETY: the caller's promise.
        std::mem::drop(unsafe { Box::from_raw(state.cast::<Subscription>()) })
    } ?= |_| ()
}
