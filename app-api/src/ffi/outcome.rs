//! Outcomes: what a handler, a lifecycle hook or an outbound fetch ends with.

use std::fmt;

use http::{HeaderMap, StatusCode};

use crate::abi::*;
use crate::ffi::body::ForeignBody;
use crate::ffi::buf::BoundaryError;

impl AbiHandleOutcome {
    /// A successful handler outcome.
    pub fn ok(response: AbiResponse) -> Self {
        AbiHandleOutcome {
            tag: OUTCOME_OK,
            response,
            message: AbiBuf::empty(),
        }
    }

    /// A failed handler outcome (`tag` is `OUTCOME_PANICKED` or `OUTCOME_ERROR`).
    pub fn failed(tag: u32, message: String) -> Self {
        AbiHandleOutcome {
            tag,
            response: AbiResponse::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(StatusCode, HeaderMap, ForeignBody), HandleFailure> {
        // SAFETY: the message and the response are owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        // SAFETY: as above.
        let response = unsafe { self.response.into_parts() };
        match self.tag {
            OUTCOME_OK => response.map_err(|e| HandleFailure::Invalid(e.0)),
            OUTCOME_PANICKED => Err(HandleFailure::Panicked(message)),
            OUTCOME_ERROR => Err(HandleFailure::Invalid(message)),
            other => Err(HandleFailure::Invalid(format!(
                "unknown outcome tag {other}"
            ))),
        }
    }
}

/// Why a handler (or hook) produced no usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleFailure {
    /// The app panicked; the message is the panic's.
    Panicked(String),
    /// The app's answer (or the plugin glue) was not valid.
    Invalid(String),
    /// The app reported a failure (a lifecycle hook returned an error).
    Failed(String),
}

impl fmt::Display for HandleFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleFailure::Panicked(message) => write!(f, "panicked: {message}"),
            HandleFailure::Invalid(message) => write!(f, "invalid result: {message}"),
            HandleFailure::Failed(message) => f.write_str(message),
        }
    }
}

impl AbiFetchOutcome {
    /// A successful fetch.
    pub fn ok(response: AbiResponse) -> Self {
        AbiFetchOutcome {
            tag: FETCH_OK,
            response,
            message: AbiBuf::empty(),
        }
    }

    /// A failed fetch with one of the `FETCH_*` error tags.
    pub fn failed(tag: u32, message: String) -> Self {
        AbiFetchOutcome {
            tag,
            response: AbiResponse::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome: the response, or the error tag and message.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(StatusCode, HeaderMap, ForeignBody), (u32, String)> {
        // SAFETY: forwarded to the caller.
        unsafe { self.into_result_with(|response| response.into_parts()) }
    }

    /// [`AbiFetchOutcome::into_result`] with the response taken by `take`.
    ///
    /// # Safety
    /// As for [`AbiFetchOutcome::into_result`]; `take` gets an owned response.
    pub(super) unsafe fn into_result_with<T>(
        self,
        take: impl FnOnce(AbiResponse) -> Result<T, BoundaryError>,
    ) -> Result<T, (u32, String)> {
        // SAFETY: the message and the response are owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        let response = take(self.response);
        match self.tag {
            FETCH_OK => response.map_err(|e| (FETCH_OTHER, format!("invalid response: {e}"))),
            tag => Err((tag, message)),
        }
    }
}

impl AbiHookOutcome {
    /// The hook succeeded.
    pub fn ok() -> Self {
        AbiHookOutcome {
            tag: OUTCOME_OK,
            message: AbiBuf::empty(),
        }
    }

    /// The hook failed (`OUTCOME_ERROR`) or panicked (`OUTCOME_PANICKED`).
    pub fn failed(tag: u32, message: String) -> Self {
        AbiHookOutcome {
            tag,
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(), HandleFailure> {
        // SAFETY: the message is owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        match self.tag {
            OUTCOME_OK => Ok(()),
            OUTCOME_PANICKED => Err(HandleFailure::Panicked(message)),
            OUTCOME_ERROR => Err(HandleFailure::Failed(message)),
            other => Err(HandleFailure::Invalid(format!(
                "unknown outcome tag {other}"
            ))),
        }
    }
}
