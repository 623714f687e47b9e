//! The one error type of the engine. Every failure a caller can cause is a variant here, so the
//! Python binding can turn it into an exception with a readable message instead of a panic.

use crate::memory::format_bytes;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A handle from an earlier step (the arena was reset since it was made).
    StaleHandle { handle_generation: u64, arena_generation: u64 },
    /// A handle that belongs to another graph, or an index that was never issued.
    ForeignHandle(String),
    /// Shapes that do not fit the operation.
    Shape(String),
    /// A token id outside the vocabulary (or table rows).
    TokenOutOfRange { id: i64, limit: usize },
    /// Any other argument that makes no sense (zero sizes, bad config, wrong lengths...).
    Invalid(String),
    /// A name that no parameter has.
    UnknownParam(String),
    /// NaN or infinity in the loss or the gradients.
    NonFinite(String),
    /// A buffer could not grow: `what` needs `bytes` (more than is `available`); `hint` says
    /// which settings drive its size.
    OutOfMemory { what: String, bytes: usize, available: Option<usize>, hint: String },
}

impl Error {
    /// An out-of-memory error re-told in the caller's terms (what needs the memory, and which
    /// settings drive it); any other error unchanged.
    pub fn out_of_memory_as(self, what_and_hint: impl FnOnce() -> (String, String)) -> Error {
        match self {
            Error::OutOfMemory { bytes, available, .. } => {
                let (what, hint) = what_and_hint();
                Error::OutOfMemory { what, bytes, available, hint }
            }
            other => other,
        }
    }

    /// An out-of-memory error that says `bytes` are needed in all (not only the part refused).
    pub fn needing(self, bytes: usize) -> Error {
        match self {
            Error::OutOfMemory { what, available, hint, .. } => Error::OutOfMemory { what, bytes, available, hint },
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StaleHandle { handle_generation, arena_generation } => write!(
                f,
                "stale tensor handle: it was made in arena generation {handle_generation}, \
                 but the arena has been reset since (now generation {arena_generation})"
            ),
            Error::ForeignHandle(msg) => write!(f, "invalid tensor handle: {msg}"),
            Error::Shape(msg) => write!(f, "shape error: {msg}"),
            Error::TokenOutOfRange { id, limit } => {
                write!(f, "token id {id} is out of range: ids must be in [0, {limit})")
            }
            Error::Invalid(msg) => write!(f, "{msg}"),
            Error::UnknownParam(name) => write!(f, "no parameter named {name:?}"),
            Error::NonFinite(msg) => write!(f, "non-finite value: {msg}"),
            Error::OutOfMemory { what, bytes, available, hint } => {
                write!(f, "out of memory: {what} needs at least {}", format_bytes(*bytes))?;
                match available {
                    Some(a) => write!(f, ", more than the {} this process can still use", format_bytes(*a))?,
                    None => write!(f, ", more than the system could allocate")?,
                }
                if !hint.is_empty() {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for returning a shape error with a formatted message.
macro_rules! shape_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Shape(format!($($arg)*))) };
}
pub(crate) use shape_err;
