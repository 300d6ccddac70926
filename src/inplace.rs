//! In-place ops (`add_`, `sub_`, `mul_`, `fill_`, `zero_`, `copy_`).
//!
//! On a realised leaf (data, parameters, `.detach()`ed values) the new value is computed and
//! written into the tensor's storage, so every alias (a `.detach()`, an ndarray view taken
//! later) sees it, as in PyTorch. On an intermediate tensor the handle is rebound to the new
//! node (functionalisation): the traced program stays pure.

use crate::autograd::{is_grad_enabled, no_grad};
use crate::error::{Error, Result};
use crate::ops::Operand;
use crate::tensor::Tensor;
use std::sync::Arc;

impl Tensor {
    fn inplace(&mut self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<()> {
        if !self.is_source() {
            let new = f(self)?.try_to_dtype(self.dtype())?;
            if new.shape() != self.shape() {
                return Err(Error::shape(
                    "in-place",
                    format!(
                        "result shape {:?} differs from the tensor's shape {:?}",
                        new.shape(),
                        self.shape()
                    ),
                ));
            }
            *self = new;
            return Ok(());
        }
        if self.requires_grad() && is_grad_enabled() {
            return Err(Error::Autograd(
                "a leaf tensor that requires grad is used in an in-place operation; do it inside kiln::no_grad".into(),
            ));
        }
        let new = no_grad(|| -> Result<Tensor> { f(self)?.try_to_dtype(self.dtype()) })?;
        if new.shape() != self.shape() {
            return Err(Error::shape(
                "in-place",
                format!(
                    "result shape {:?} differs from the tensor's shape {:?}",
                    new.shape(),
                    self.shape()
                ),
            ));
        }
        let value = new.literal()?;
        let mut slot = self.0.storage.try_write().map_err(|_| {
            Error::Borrow(
                "an ndarray view of this tensor is alive; drop it before changing the tensor"
                    .into(),
            )
        })?;
        match slot.as_mut().and_then(Arc::get_mut) {
            // Write into the existing buffer so that its address (seen by ndarray views taken
            // before and after) does not change.
            Some(lit) => lit.data = value.data.clone(),
            None => *slot = Some(value),
        }
        Ok(())
    }

    /// `self += other` in place.
    pub fn add_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| t.try_add(o))
    }
    /// `self -= other` in place.
    pub fn sub_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| t.try_sub(o))
    }
    /// `self *= other` in place.
    pub fn mul_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| t.try_mul(o))
    }
    /// Fills with `value` in place.
    pub fn fill_(&mut self, value: f64) -> Result<()> {
        self.inplace(|t| Ok(t.filled(value)))
    }
    /// Fills with zeros in place.
    pub fn zero_(&mut self) -> Result<()> {
        self.fill_(0.0)
    }
    /// Copies `src` (broadcast to this shape, converted to this dtype) in place.
    pub fn copy_(&mut self, src: &Tensor) -> Result<()> {
        let shape = self.shape().to_vec();
        self.inplace(|_| src.try_broadcast_to(&shape))
    }
}

/// Writes new values into realised tensors, all computed by one program: `targets[i] := values[i]`.
///
/// This is how optimisers update parameters and their state. Eagerly, the values are computed
/// together (one lowering, one execution) and then stored in the targets' storage, where every
/// alias sees them. Inside a compiled step (see `kiln::compile`), the assignments are recorded
/// and become outputs of the compiled program, written back after each replay.
///
/// Each target must be a realised tensor (a leaf: parameter, buffer, optimiser state) that does
/// not require grad or is updated under `no_grad`; each value must have the target's shape, and
/// is converted to its dtype.
pub fn assign(pairs: &[(&Tensor, &Tensor)]) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(pairs.len());
    for (t, v) in pairs {
        if !t.is_source() {
            return Err(Error::Autograd(format!(
                "assign: the target must be a leaf holding data (a parameter or buffer); this one is made by `{}`",
                t.op().name()
            )));
        }
        if v.shape() != t.shape() {
            return Err(Error::shape(
                "assign",
                format!(
                    "value shape {:?} differs from the target's shape {:?}",
                    v.shape(),
                    t.shape()
                ),
            ));
        }
        values.push(no_grad(|| v.try_to_dtype(t.dtype()))?);
    }
    if crate::compile::record_assignments(
        pairs
            .iter()
            .map(|(t, _)| (*t).clone())
            .zip(values.iter().cloned()),
    ) {
        return Ok(());
    }
    crate::lower::realize(&values)?;
    for ((t, _), v) in pairs.iter().zip(&values) {
        let value = v.literal()?;
        store_value(t, Arc::unwrap_or_clone(value))?;
    }
    Ok(())
}

/// Writes a value into a source tensor's storage, in its existing buffer when nothing else
/// holds it (so the buffer's address, seen by ndarray views, does not change).
pub(crate) fn store_value(t: &Tensor, value: kiln_ir::Literal) -> Result<()> {
    let mut slot =
        t.0.storage
            .try_write()
            .map_err(|_| Error::Borrow("an ndarray view of an assigned tensor is alive".into()))?;
    match slot.as_mut().and_then(Arc::get_mut) {
        Some(lit) => lit.data = value.data,
        None => *slot = Some(Arc::new(value)),
    }
    Ok(())
}
