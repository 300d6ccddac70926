//! kiln's error type.

use kiln_ir::{IrError, Loc};

/// Everything that can go wrong in kiln's user API.
///
/// Methods that can fail on user input come in two forms: `try_x` returns this error, `x`
/// panics with its message (which names the op, the shapes and the caller's line).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op applied to tensors it does not accept.
    #[error("{op}: {msg} (at {loc})")]
    Shape {
        op: &'static str,
        msg: String,
        loc: Loc,
    },
    /// An error from the IR layer (verification, autodiff, evaluation).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// A tensor used with the wrong element type.
    #[error("{0}")]
    DType(String),
    /// A device that is not available in this build or on this machine.
    #[error("device {device} is not available: {why}")]
    Device { device: String, why: String },
    /// A misuse of autograd (backward on a non-scalar, in-place op on a leaf, ...).
    #[error("autograd: {0}")]
    Autograd(String),
    /// A tensor's storage is borrowed (an ndarray view is alive) and cannot be changed.
    #[error("tensor storage is borrowed: {0}")]
    Borrow(String),
    /// File or data errors, naming the file and the problem.
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    #[track_caller]
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Shape {
            op,
            msg: msg.into(),
            loc: Loc::caller(),
        }
    }

    /// The error with its source location replaced by `loc`, for errors raised in closures
    /// (which are not `#[track_caller]`) on behalf of the user's call at `loc`.
    pub(crate) fn at(self, loc: Loc) -> Error {
        match self {
            Error::Shape { op, msg, .. } => Error::Shape { op, msg, loc },
            e => e,
        }
    }
}
