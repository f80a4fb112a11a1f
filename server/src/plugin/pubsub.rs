//! The pub/sub side of the capability table (ABI 1.5): subscribing and publishing, and the
//! table of functions behind every [`AbiSubscription`] the host hands a plugin.

use std::ffi::c_void;

use berth_app::abi::*;
use berth_app::ffi::IntoFfi as _;

berth_app::ffi_fn! {
    /// Subscribes the app to a channel.
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds; `channel` is borrowed for
    /// the call.
    pub(super) unsafe fn subscribe(ctx: *mut c_void, channel: AbiStr) -> FfiFuture<AbiSubscribeOutcome> {
        let _ = (ctx, channel);
        std::future::ready(AbiSubscribeOutcome {
            tag: SUB_FAILED,
            subscription: AbiSubscription { state: std::ptr::null_mut(), vtable: std::ptr::null() },
            message: AbiBuf::from_string("pub/sub is not built yet".to_owned()),
        })
        .into_ffi()
    } ?= |_| std::process::abort()
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
        let _ = (ctx, channel);
        // SAFETY: `payload` moved to us; the `Bytes` release it once, here.
        drop(unsafe { payload.into_bytes() });
        std::future::ready(AbiPublishOutcome {
            tag: SUB_FAILED,
            receivers: 0,
            message: AbiBuf::from_string("pub/sub is not built yet".to_owned()),
        })
        .into_ffi()
    } ?= |_| std::process::abort()
}
