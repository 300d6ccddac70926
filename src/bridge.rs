//! The ndarray bridge: the Rust counterpart of PyTorch's NumPy bridge.
//!
//! - [`Tensor::from_ndarray`] takes an array by value and keeps its buffer: no copy when the
//!   array is in standard (row-major) layout, one copy otherwise.
//! - [`Tensor::ndarray`] / [`Tensor::ndarray_mut`] borrow a realised tensor's buffer as an
//!   `ArrayView`/`ArrayViewMut`: no copy. A write through the mutable view is the tensor's new
//!   value, as writing through `t.numpy()` changes `t`. Rust's aliasing rules hold at run time:
//!   while a view is alive the tensor cannot be changed in place (that is an error, not a race).
//! - [`Tensor::to_ndarray`] copies.
//!
//! Where it is not zero-copy: an unrealised tensor is computed first (its buffer is then shared),
//! and a tensor that requires grad cannot be borrowed mutably (PyTorch refuses `.numpy()` on it
//! too; `.detach()` shares the storage and can be).

use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use kiln_ir::{Literal, Loc};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};
use std::marker::PhantomData;
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// A borrowed view of a tensor's buffer; holds the tensor's storage lock while alive.
pub struct NdRef<'a, T> {
    guard: RwLockReadGuard<'a, Option<Arc<Literal>>>,
    _t: PhantomData<T>,
}

impl<T: Element> NdRef<'_, T> {
    pub fn view(&self) -> ArrayViewD<'_, T> {
        let lit = self.guard.as_ref().expect("checked realised");
        let s = T::slice(&lit.data).expect("checked dtype");
        ArrayViewD::from_shape(IxDyn(&lit.shape), s).expect("literal length matches its shape")
    }
}

/// A mutable view of a tensor's buffer; holds the tensor's storage lock while alive.
pub struct NdMut<'a, T> {
    guard: RwLockWriteGuard<'a, Option<Arc<Literal>>>,
    storage: &'a crate::tensor::Storage,
    _t: PhantomData<T>,
}

impl<T> Drop for NdMut<'_, T> {
    fn drop(&mut self) {
        crate::tensor::end_mut_view(self.storage);
    }
}

impl<T: Element> NdMut<'_, T> {
    pub fn view_mut(&mut self) -> ArrayViewMutD<'_, T> {
        let lit = Arc::make_mut(self.guard.as_mut().expect("checked realised"));
        let shape = lit.shape.clone();
        let s = T::slice_mut(&mut lit.data).expect("checked dtype");
        ArrayViewMutD::from_shape(IxDyn(&shape), s).expect("literal length matches its shape")
    }
}

impl Tensor {
    /// A tensor owning the array's buffer (no copy for a standard-layout array).
    #[track_caller]
    pub fn from_ndarray<T: Element, D: ndarray::Dimension>(a: ndarray::Array<T, D>) -> Tensor {
        let loc = Loc::caller();
        let shape = a.shape().to_vec();
        let a = if a.is_standard_layout() {
            a
        } else {
            a.as_standard_layout().into_owned()
        };
        let (mut v, off) = a.into_raw_vec_and_offset();
        if let Some(o) = off.filter(|&o| o > 0) {
            v.drain(..o);
        }
        v.truncate(kiln_ir::shape::numel(&shape));
        let lit =
            Literal::new(shape, T::into_data(v)).expect("an ndarray's buffer matches its shape");
        Tensor::leaf(lit, false, loc)
    }

    /// A copy of the value as an ndarray (converted to `T`).
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        let v = self.try_to_vec::<T>()?;
        Ok(ArrayD::from_shape_vec(IxDyn(self.shape()), v).expect("length matches shape"))
    }

    fn check_dtype<T: Element>(&self) -> Result<()> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DType(format!(
                "tensor has dtype {}, the view asks for {}",
                self.dtype(),
                T::DTYPE
            )));
        }
        Ok(())
    }

    /// Borrows the buffer as an ndarray view (realising the tensor first).
    pub fn ndarray<T: Element>(&self) -> Result<NdRef<'_, T>> {
        self.check_dtype::<T>()?;
        // Try the lock before anything reads the value: a mutable view alive on this thread
        // holds it, and a blocking read (`realize` does one) would wait forever.
        let borrowed = || Error::Borrow("the tensor is borrowed mutably".into());
        let guard = match self.0.storage.try_read() {
            Ok(g) if g.is_some() => g,
            Ok(g) => {
                drop(g);
                self.realize()?;
                self.0.storage.try_read().map_err(|_| borrowed())?
            }
            Err(TryLockError::WouldBlock) => return Err(borrowed()),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        Ok(NdRef {
            guard,
            _t: PhantomData,
        })
    }

    /// Borrows the buffer mutably; writes change the tensor (and its detached aliases).
    pub fn ndarray_mut<T: Element>(&self) -> Result<NdMut<'_, T>> {
        self.check_dtype::<T>()?;
        if self.requires_grad() {
            return Err(Error::Autograd(
                "can't borrow a tensor that requires grad mutably; use .detach() (which shares the storage)".into(),
            ));
        }
        let borrowed = || Error::Borrow("the tensor is already borrowed".into());
        let guard = match self.0.storage.try_write() {
            Ok(g) if g.is_some() => g,
            Ok(g) => {
                drop(g);
                self.realize()?;
                self.0.storage.try_write().map_err(|_| borrowed())?
            }
            Err(TryLockError::WouldBlock) => return Err(borrowed()),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        crate::tensor::begin_mut_view(&self.0.storage);
        Ok(NdMut {
            guard,
            storage: &self.0.storage,
            _t: PhantomData,
        })
    }

    /// Address of the realised buffer (for checking that two handles share memory).
    pub fn data_ptr(&self) -> Option<usize> {
        let g = crate::tensor::read_storage(&self.0.storage).ok()??;
        let lit = g.as_ref();
        Some(match &lit.data {
            kiln_ir::Data::F32(v) => v.as_ptr() as usize,
            kiln_ir::Data::F64(v) => v.as_ptr() as usize,
            kiln_ir::Data::I64(v) => v.as_ptr() as usize,
            kiln_ir::Data::Bool(v) => v.as_ptr() as usize,
        })
    }
}
