//! # kiln
//!
//! A deep-learning engine for Rust built like a compiler. Tensor code written in the style of
//! PyTorch is traced into a graph IR ([`kiln_ir`]), differentiated symbolically (the backward
//! pass is more IR, see [`autograd::backward_graph`]) and executed.
//!
//! ```
//! use kiln::Tensor;
//! let x = Tensor::ones([2, 2]).requires_grad_(true);
//! let y = &x + 2.0;
//! let out = (&y * &y * 3.0).mean_all();
//! out.backward();
//! assert_eq!(out.item(), 27.0);
//! assert_eq!(x.grad().unwrap().to_vec::<f32>(), vec![4.5; 4]);
//! ```
//!
//! Realisation (printing, [`Tensor::item`], [`Tensor::to_vec`]) runs the part of the traced
//! program that is needed; in this release it runs on the reference interpreter of `kiln-ir`.

pub mod autograd;
mod bridge;
pub mod checkpoint;
pub mod cli;
pub mod compile;
pub mod data;
mod device;
mod display;
pub mod error;
pub mod functional;
mod inplace;
pub mod lesions;
pub mod lower;
pub mod nifti;
pub mod nn;
mod ops;
pub mod optim;
pub mod random;
mod resident;
mod tensor;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use bridge::{NdMut, NdRef};
pub use device::{cuda_is_available, Device};
pub use display::format_literal;
pub use error::{Error, Result};
pub use inplace::assign;
pub use kiln_ir as ir;
pub use kiln_ir::DType;
pub(crate) use ops::where_labeled;
pub use ops::{cat, norm_dim, stack, try_cat, where_, Operand};
pub use random::{manual_seed, Generator};
pub use tensor::{Element, Tensor};

/// The IR graph that realising `outputs` would run (inputs are the realised leaves), for
/// dumping and debugging: `println!("{}", kiln::trace(&[&y])?)`.
pub fn trace(outputs: &[&Tensor]) -> Result<ir::Graph> {
    let roots: Vec<Tensor> = outputs.iter().map(|t| (*t).clone()).collect();
    let mut lw = lower::lower(&roots, false)?;
    for (i, t) in roots.iter().enumerate() {
        lw.graph.set_output(format!("out{i}"), lw.node_of[&t.id()]);
    }
    Ok(lw.graph)
}
