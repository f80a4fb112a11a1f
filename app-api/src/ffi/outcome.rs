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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;

    use crate::ffi::test_support::*;

    #[test]
    fn handle_outcome_ok_into_result() {
        let response = AbiResponse::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            AbiBody::full(Bytes::from("made")),
        );
        // SAFETY: just made, received once.
        let (status, headers, body) =
            unsafe { AbiHandleOutcome::ok(response).into_result() }.expect("ok outcome");
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.is_empty());
        assert_eq!(read_all(body), (vec![Bytes::from("made")], None));
    }

    #[test]
    fn handle_outcome_failures_into_result() {
        let result = |outcome: AbiHandleOutcome| {
            // SAFETY: just made, received once.
            unsafe { outcome.into_result() }.map(|(status, ..)| status)
        };
        assert_eq!(
            result(AbiHandleOutcome::failed(
                OUTCOME_PANICKED,
                "boom".to_owned()
            )),
            Err(HandleFailure::Panicked("boom".to_owned()))
        );
        assert_eq!(
            result(AbiHandleOutcome::failed(
                OUTCOME_ERROR,
                "bad request".to_owned()
            )),
            Err(HandleFailure::Invalid("bad request".to_owned()))
        );
        assert_eq!(
            result(AbiHandleOutcome::failed(7, "?".to_owned())),
            Err(HandleFailure::Invalid("unknown outcome tag 7".to_owned()))
        );
        let mut bad_status = AbiHandleOutcome::ok(AbiResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            AbiBody::empty(),
        ));
        bad_status.response.status = 42;
        assert_eq!(
            result(bad_status),
            Err(HandleFailure::Invalid("invalid status code 42".to_owned()))
        );
    }

    #[test]
    fn fetch_outcome_into_result() {
        let ok = AbiFetchOutcome::ok(AbiResponse::new(
            StatusCode::NOT_FOUND,
            HeaderMap::new(),
            AbiBody::empty(),
        ));
        // SAFETY: just made, received once.
        let (status, _, body) = unsafe { ok.into_result() }.expect("ok outcome");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.is_end());

        let failed = AbiFetchOutcome::failed(FETCH_TIMEOUT, "no answer in 5 s".to_owned());
        // SAFETY: as above.
        let err = unsafe { failed.into_result() }
            .map(|_| ())
            .expect_err("failed");
        assert_eq!(err, (FETCH_TIMEOUT, "no answer in 5 s".to_owned()));
    }
}
