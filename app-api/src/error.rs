//! The SDK's error types that the boundary code below the SDK types also uses.

use std::fmt;

/// A body failed to stream: the peer went away, the producer reported an error, or a limit was
/// reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    message: String,
}

impl BodyError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        BodyError {
            message: message.into(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BodyError {}
