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
fn failure(error: &PubSubError) -> (u32, String) {
    let tag = match error {
        PubSubError::Invalid(_) => SUB_INVALID,
        _ => SUB_FAILED,
    };
    (tag, error.to_string())
}

/// A subscribe outcome for the plugin: the subscription, handed over, or why not.
fn subscribe_outcome(result: Result<Subscription, PubSubError>) -> AbiSubscribeOutcome {
    match result {
        Ok(subscription) => AbiSubscribeOutcome::ok(to_abi(subscription)),
        Err(error) => {
            let (tag, message) = failure(&error);
            AbiSubscribeOutcome::failed(tag, message)
        }
    }
}

/// A publish outcome for the plugin.
fn publish_outcome(result: Result<u64, PubSubError>) -> AbiPublishOutcome {
    match result {
        Ok(receivers) => AbiPublishOutcome::ok(receivers),
        Err(error) => {
            let (tag, message) = failure(&error);
            AbiPublishOutcome::failed(tag, message)
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
            Poll::Pending => AbiSubscriptionPoll::pending(),
            Poll::Ready(Next::Message { data, dropped }) => {
                AbiSubscriptionPoll::message(data, dropped)
            }
            Poll::Ready(Next::End { reason, dropped }) => {
                AbiSubscriptionPoll::end(reason.to_string(), dropped)
            }
        }
    } ?= |panic| {
        AbiSubscriptionPoll::end(format!("the host panicked in a subscription: {panic}"), 0)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::poll_fn;
    use std::time::Duration;

    use berth_app::ffi::ContextExt as _;
    use bytes::Bytes;

    use super::*;
    use crate::host::allowlist::Allowlist;
    use crate::host::{AppServices, Broker, Outbound, OutboundPolicy, SocketLimits};

    fn services(broker: &Broker) -> Arc<AppServices> {
        let tls = crate::tls::client_config(None).unwrap();
        let outbound = Outbound::new(Duration::from_secs(5), Duration::from_secs(5), tls);
        let policy = OutboundPolicy::new(Allowlist::default(), 8, 1024, SocketLimits::default());
        let runtime = tokio::runtime::Handle::current();
        AppServices::new(Arc::from("pubsub-app"), outbound, policy, runtime, broker)
    }

    /// A scope reference as the plugin holds one, released when dropped.
    struct Ctx(*mut c_void);

    impl Ctx {
        fn new(services: &Arc<AppServices>) -> Self {
            Ctx(Arc::into_raw(RequestScope::new(services, None))
                .cast_mut()
                .cast())
        }
    }

    impl Drop for Ctx {
        fn drop(&mut self) {
            // SAFETY: the reference `new` made, released once.
            std::mem::drop(unsafe { Arc::from_raw(self.0.cast_const().cast::<RequestScope>()) });
        }
    }

    /// Polls a host subscription once for its next event, as the plugin does.
    async fn next(subscription: &AbiSubscription) -> (u32, u64, Bytes) {
        // SAFETY: a live subscription from the host; its vtable is a static.
        let table = unsafe { &*subscription.vtable };
        let polled = poll_fn(|cx| {
            cx.with_ffi_context(|fcx| {
                // SAFETY: a live subscription, polled by one task.
                let polled = unsafe { (table.poll_next)(subscription.state, fcx) };
                match polled.tag {
                    SUB_PENDING => Poll::Pending,
                    _ => Poll::Ready(polled),
                }
            })
        });
        let polled = tokio::time::timeout(Duration::from_secs(5), polled)
            .await
            .unwrap();
        // SAFETY: the poll's data is ours.
        (polled.tag, polled.dropped, unsafe {
            polled.data.into_bytes()
        })
    }

    #[tokio::test]
    async fn subscribe_publish_poll_and_drop_through_the_abi() {
        let broker = Broker::memory(&Default::default());
        let services = services(&broker);
        let ctx = Ctx::new(&services);
        // SAFETY: `ctx` is live, the channel borrowed for the call; the outcome is ours.
        let subscription =
            unsafe { subscribe(ctx.0, AbiStr::new(b"news")).await.into_result() }.unwrap();
        // SAFETY: a subscription from the host.
        assert_eq!(
            unsafe { &*subscription.vtable }.size,
            size_of::<AbiSubscriptionVTable>()
        );
        let payload = AbiBuf::from_bytes(Bytes::from_static(b"hi"));
        // SAFETY: as above; the payload moves to the host.
        let published = unsafe {
            publish(ctx.0, AbiStr::new(b"news"), payload)
                .await
                .into_result()
        };
        assert_eq!(published, Ok(1));
        let (tag, dropped, data) = next(&subscription).await;
        assert_eq!((tag, dropped, &data[..]), (SUB_MESSAGE, 0, &b"hi"[..]));
        assert_eq!(broker.status()["channels"][0]["subscribers"], 1);

        // Retiring the version ends its subscription.
        services.retire();
        let (tag, _, reason) = next(&subscription).await;
        assert_eq!(tag, SUB_END);
        assert_eq!(&reason[..], b"the app version was retired");
        // SAFETY: the subscription is ours, dropped once.
        unsafe { ((*subscription.vtable).drop)(subscription.state) };
        assert_eq!(broker.status()["channels"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn bad_channels_and_payloads_are_invalid() {
        let broker = Broker::memory(&crate::host::pubsub::PubSubConfig {
            max_message: 4,
            ..Default::default()
        });
        let services = services(&broker);
        let ctx = Ctx::new(&services);
        for (channel, needle) in [
            (&b""[..], "empty"),
            (&b"\xff"[..], "not UTF-8"),
            (&[b'x'; 257][..], "limit of 256"),
        ] {
            // SAFETY: as above.
            let refused = unsafe { subscribe(ctx.0, AbiStr::new(channel)).await.into_result() };
            let Err((tag, message)) = refused else {
                panic!("{channel:?} was accepted");
            };
            assert_eq!(tag, SUB_INVALID, "{message}");
            assert!(message.contains(needle), "{message}");
        }
        let payload = AbiBuf::from_bytes(Bytes::from_static(b"12345"));
        // SAFETY: as above.
        let refused = unsafe {
            publish(ctx.0, AbiStr::new(b"c"), payload)
                .await
                .into_result()
        };
        let Err((tag, message)) = refused else {
            panic!("an oversized message was accepted");
        };
        assert_eq!(tag, SUB_INVALID);
        assert!(message.contains("limit of 4"), "{message}");
    }
}
