//! Data loading: datasets, batching with a background thread, and the MNIST reader.
//!
//! The pieces mirror PyTorch's `torch.utils.data`:
//!
//! - [`Dataset`]: indexed samples (`len`, `get(i)`). A sample is any type that knows how to be
//!   batched ([`Collate`]): a [`Tensor`], a label (`i64`, `f32`, `f64`), a tuple of those, a
//!   `Vec<Tensor>`, or your own struct.
//! - [`DataLoader`]: splits an epoch into batches (seeded shuffling with kiln's
//!   [`Generator`](crate::Generator), `drop_last`), and prepares them on a background thread
//!   so that reading and stacking the next batch overlaps the training step on the current one.
//! - [`Mnist`]: the MNIST CSV reader (the project bundles 5,000 real digits under
//!   `data/mnist/`), with scaling to `[0, 1]`, optional mean/std normalisation, padding to
//!   LeNet's 32x32 and deterministic train/test splits.
//!
//! Every failure on user input — a missing or malformed file, a sample of the wrong shape, a
//! dataset whose `get` fails or panics on the worker thread — is an [`Error`] value, never a
//! panic in the caller.
//!
//! ```no_run
//! use kiln::data::{DataLoader, Mnist};
//! # fn main() -> kiln::Result<()> {
//! let (train, test) = Mnist::bundled()?.with_padding(2).split_per_class(0.2)?;
//! let mut loader = DataLoader::new(train, 64)?.shuffle(0).drop_last(true);
//! for epoch in 0..2 {
//!     for batch in &mut loader {
//!         let (images, labels) = batch?; // [64, 1, 32, 32] f32 and [64] i64
//!         # let _ = (images, labels, epoch);
//!     }
//! }
//! # let _ = test;
//! # Ok(())
//! # }
//! ```

mod loader;
mod mnist;

pub use loader::{Batches, DataLoader};
pub use mnist::{Mnist, MNIST_CLASSES, MNIST_PIXELS, MNIST_SIDE};

use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use kiln_ir::{DType, Data, Literal};
use std::sync::Arc;

/// An indexed collection of samples (`torch.utils.data.Dataset`).
///
/// `Send + Sync` because a [`DataLoader`] reads it from its background thread while the
/// caller keeps a handle.
pub trait Dataset: Send + Sync {
    /// One sample, e.g. `(image, label)`. A [`DataLoader`] needs it to be [`Collate`].
    type Sample;

    /// The number of samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`0 <= index < len()`); an index out of range is an error, not a panic,
    /// because a dataset may be a view of data whose size changed underneath.
    fn get(&self, index: usize) -> Result<Self::Sample>;
}

/// Samples held in memory, the simplest dataset (for tests and small data).
///
/// A wrapper rather than `impl Dataset for Vec<S>`: with the trait in scope, the trait's
/// `get` would shadow the slice's `get` on every vector of the caller.
#[derive(Clone, Debug, Default)]
pub struct VecDataset<S>(pub Vec<S>);

impl<S: Clone + Send + Sync> Dataset for VecDataset<S> {
    type Sample = S;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, index: usize) -> Result<S> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| index_error("VecDataset", index, self.0.len()))
    }
}

impl<S> From<Vec<S>> for VecDataset<S> {
    fn from(samples: Vec<S>) -> VecDataset<S> {
        VecDataset(samples)
    }
}

/// A shared dataset is a dataset, so one dataset can feed several loaders.
impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    type Sample = D::Sample;

    fn len(&self) -> usize {
        (**self).len()
    }

    fn get(&self, index: usize) -> Result<Self::Sample> {
        (**self).get(index)
    }
}

pub(crate) fn index_error(what: &str, index: usize, len: usize) -> Error {
    Error::Data {
        path: what.to_string(),
        msg: format!("sample index {index} is out of range for {len} samples"),
    }
}

/// How samples are combined into a batch (PyTorch's `default_collate`).
///
/// Tensors are stacked along a new first axis; scalars become a 1-D tensor; tuples and vectors
/// are batched field by field. Implement it for your own sample struct to batch it into a
/// struct of tensors.
pub trait Collate: Sized {
    /// The batched form, e.g. `Tensor` for `Tensor` and `(Tensor, Tensor)` for
    /// `(Tensor, i64)`.
    type Batch;

    /// Combines `samples` (at least one) into one batch.
    fn collate(samples: Vec<Self>) -> Result<Self::Batch>;
}

fn collate_error(msg: String) -> Error {
    Error::Data {
        path: "collate".to_string(),
        msg,
    }
}

/// Stacks realised tensors of one shape and dtype along a new axis 0 by concatenating their
/// buffers: one copy, no traced op, so it is cheap on the loader's thread and the batch is a
/// realised leaf.
fn stack_values(samples: &[Tensor]) -> Result<Tensor> {
    let first = samples
        .first()
        .ok_or_else(|| collate_error("cannot batch zero samples".to_string()))?;
    let (shape, dtype) = (first.shape().to_vec(), first.dtype());
    let mut values: Vec<Arc<Literal>> = Vec::with_capacity(samples.len());
    for (i, t) in samples.iter().enumerate() {
        if t.shape() != shape.as_slice() || t.dtype() != dtype {
            return Err(collate_error(format!(
                "sample {i} of the batch is a {} tensor of shape {:?}, but sample 0 is a {} \
                 tensor of shape {:?}; a batch stacks samples of one shape and dtype",
                t.dtype().name(),
                t.shape(),
                dtype.name(),
                shape
            )));
        }
        values.push(t.literal()?);
    }
    let data = match dtype {
        DType::F32 => concat::<f32>(&values),
        DType::F64 => concat::<f64>(&values),
        DType::I64 => concat::<i64>(&values),
        DType::Bool => concat::<bool>(&values),
    };
    let mut batch_shape = Vec::with_capacity(shape.len() + 1);
    batch_shape.push(samples.len());
    batch_shape.extend_from_slice(&shape);
    let lit = Literal::new(batch_shape, data).map_err(collate_error)?;
    Ok(Tensor::from_literal(lit))
}

fn concat<T: Element>(values: &[Arc<Literal>]) -> Data {
    let total = values.iter().map(|l| l.numel()).sum();
    let mut out: Vec<T> = Vec::with_capacity(total);
    for l in values {
        match T::slice(&l.data) {
            Some(s) => out.extend_from_slice(s),
            // Unreachable for the dtype checked above; converting keeps it total anyway.
            None => out.extend(T::from_data(&l.data)),
        }
    }
    T::into_data(out)
}

impl Collate for Tensor {
    type Batch = Tensor;

    fn collate(samples: Vec<Tensor>) -> Result<Tensor> {
        stack_values(&samples)
    }
}

macro_rules! collate_scalar {
    ($t:ty) => {
        /// Scalars batch into a 1-D tensor (labels: `i64` becomes what
        /// [`crate::functional::cross_entropy`] takes as targets).
        impl Collate for $t {
            type Batch = Tensor;

            fn collate(samples: Vec<$t>) -> Result<Tensor> {
                let n = samples.len();
                Tensor::try_from_vec(samples, [n])
            }
        }
    };
}
collate_scalar!(i64);
collate_scalar!(f32);
collate_scalar!(f64);

/// A sample given as a list of tensors (all samples with the same number) batches position by
/// position.
impl Collate for Vec<Tensor> {
    type Batch = Vec<Tensor>;

    fn collate(samples: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        let width = samples.first().map_or(0, Vec::len);
        let mut columns: Vec<Vec<Tensor>> = vec![Vec::with_capacity(samples.len()); width];
        for (i, s) in samples.into_iter().enumerate() {
            if s.len() != width {
                return Err(collate_error(format!(
                    "sample {i} of the batch has {} tensors, sample 0 has {width}",
                    s.len()
                )));
            }
            for (col, t) in columns.iter_mut().zip(s) {
                col.push(t);
            }
        }
        columns.iter().map(|c| stack_values(c)).collect()
    }
}

macro_rules! collate_tuple {
    ($($name:ident $var:ident $idx:tt),+) => {
        /// Tuples batch field by field: `(image, label)` gives `(images, labels)`.
        impl<$($name: Collate),+> Collate for ($($name,)+) {
            type Batch = ($($name::Batch,)+);

            fn collate(samples: Vec<Self>) -> Result<Self::Batch> {
                let ($(mut $var,)+) = ($(Vec::<$name>::with_capacity(samples.len()),)+);
                for s in samples {
                    $($var.push(s.$idx);)+
                }
                Ok(($($name::collate($var)?,)+))
            }
        }
    };
}
collate_tuple!(A a 0);
collate_tuple!(A a 0, B b 1);
collate_tuple!(A a 0, B b 1, C c 2);
collate_tuple!(A a 0, B b 1, C c 2, D d 3);
