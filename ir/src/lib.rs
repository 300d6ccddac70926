//! kiln-ir: the graph IR of kiln.
//!
//! A tensor program is a [`Graph`] of [`Node`]s, each holding an [`Op`], its result type and
//! the user's source location. This crate defines the op set and its shape rules
//! ([`infer`]), the [`verify`](verify::verify)er, symbolic reverse-mode differentiation
//! ([`autodiff`]), the text and DOT forms ([`text`], [`dot`]) and the reference
//! [`interp`]reter that every backend is tested against. It knows nothing of backends.

pub mod autodiff;
pub mod dot;
pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod literal;
pub mod op;
pub mod passes;
pub mod shape;
pub mod text;
pub mod verify;

pub use dtype::DType;
pub use error::{IrError, NodeContext, Result};
pub use graph::{Graph, Loc, Node, NodeId};
pub use literal::{Data, Literal};
pub use op::{BinaryOp, CmpOp, ConvParams, Op, ReduceOp, SliceAxis, UnaryOp};
pub use shape::TensorType;
pub use verify::verify;
