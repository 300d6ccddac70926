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
use kiln_ir::{Data, Loc};
use std::sync::{Arc, TryLockError};

impl Tensor {
    /// `self := f(self)`; errors name the user's line (`f` is a closure, which cannot).
    #[track_caller]
    fn inplace(&mut self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<()> {
        let loc = Loc::caller();
        self.inplace_at(f).map_err(|e| e.at(loc))
    }

    fn inplace_at(&mut self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<()> {
        // An ndarray view holds the storage lock. Fail before computing anything: recording
        // `f(self)` reads the value, which would wait forever on a mutable view held by this
        // thread. A source's storage is written (no view at all may be alive); an intermediate
        // is only read and rebound (shared views are fine).
        let borrowed = if self.is_source() {
            matches!(self.0.storage.try_write(), Err(TryLockError::WouldBlock))
        } else {
            matches!(self.0.storage.try_read(), Err(TryLockError::WouldBlock))
        };
        if borrowed {
            return Err(Error::Borrow(
                "an ndarray view of this tensor is alive; drop it before changing the tensor"
                    .into(),
            ));
        }
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
        let was = self.device();
        let mut slot = self.0.storage.try_write().map_err(|_| {
            Error::Borrow(
                "an ndarray view of this tensor is alive; drop it before changing the tensor"
                    .into(),
            )
        })?;
        match slot.as_mut().and_then(Arc::get_mut) {
            // Write into the existing buffer so that its address (`data_ptr`, ndarray views
            // taken before and after) does not change.
            Some(lit) => overwrite(&mut lit.data, &value.data),
            None => *slot = Some(value),
        }
        drop(slot);
        // A tensor on a GPU stays there.
        crate::resident::after_host_write(&self.0.storage, was)
    }

    /// `self += other` in place.
    #[track_caller]
    pub fn add_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| storable(t, t.try_add(o)?))
    }
    /// `self -= other` in place.
    #[track_caller]
    pub fn sub_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| storable(t, t.try_sub(o)?))
    }
    /// `self *= other` in place.
    #[track_caller]
    pub fn mul_<'a>(&mut self, other: impl Into<Operand<'a>>) -> Result<()> {
        let o = other.into();
        self.inplace(|t| storable(t, t.try_mul(o)?))
    }
    /// Fills with `value` in place.
    #[track_caller]
    pub fn fill_(&mut self, value: f64) -> Result<()> {
        self.inplace(|t| Ok(t.filled(value)))
    }
    /// Fills with zeros in place.
    #[track_caller]
    pub fn zero_(&mut self) -> Result<()> {
        self.fill_(0.0)
    }
    /// Copies `src` (broadcast to this shape, converted to this dtype) in place.
    #[track_caller]
    pub fn copy_(&mut self, src: &Tensor) -> Result<()> {
        let shape = self.shape().to_vec();
        self.inplace(|_| src.try_broadcast_to(&shape))
    }
}

/// Copies `src` into `dst`'s buffer (same dtype and length), keeping its address.
fn overwrite(dst: &mut Data, src: &Data) {
    match (dst, src) {
        (Data::F32(d), Data::F32(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (Data::F64(d), Data::F64(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (Data::I64(d), Data::I64(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (Data::Bool(d), Data::Bool(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (d, s) => *d = s.clone(),
    }
}

/// An in-place arithmetic result must keep the tensor's kind: PyTorch refuses
/// `int_tensor.add_(0.5)` ("result type Float can't be cast to the desired output type Long")
/// rather than truncate. (`copy_` and `fill_` convert, as in PyTorch.)
fn storable(t: &Tensor, r: Tensor) -> Result<Tensor> {
    if crate::ops::category(r.dtype()) > crate::ops::category(t.dtype()) {
        return Err(Error::DType(format!(
            "in-place: result type {} can't be cast to the tensor's dtype {}",
            r.dtype(),
            t.dtype()
        )));
    }
    Ok(r)
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
    let was = t.device();
    let mut slot =
        t.0.storage
            .try_write()
            .map_err(|_| Error::Borrow("an ndarray view of an assigned tensor is alive".into()))?;
    match slot.as_mut().and_then(Arc::get_mut) {
        Some(lit) => overwrite(&mut lit.data, &value.data),
        None => *slot = Some(Arc::new(value)),
    }
    drop(slot);
    // A tensor on a GPU stays there.
    crate::resident::after_host_write(&t.0.storage, was)
}
