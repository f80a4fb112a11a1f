//! The WebSocket side of the capability table (ABI 1.5): accepting a handshake, and the table
//! of functions behind every [`AbiWebSocket`] the host hands a plugin.

use std::ffi::c_void;

use berth_app::abi::*;

berth_app::ffi_fn! {
    /// Accepts the WebSocket handshake of the request `ctx` serves.
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds, `accept` is borrowed for
    /// the call and `session` moves to the host.
    pub(super) unsafe fn ws_accept(
        ctx: *mut c_void,
        accept: *const AbiWsAccept,
        session: AbiWsSession,
    ) -> u32 {
        let _ = (ctx, accept);
        // SAFETY: `session` moved to us and is released exactly once, here.
        unsafe { (session.drop)(session.state) };
        WS_ACCEPT_NOT_UPGRADE
    } ?= |_| WS_ACCEPT_NOT_UPGRADE
}
