//! Tensors whose value lives on a GPU (feature `cuda`).
//!
//! A tensor's storage cell holds its host value (`Option<Arc<Literal>>`). A device copy is
//! recorded beside it, in a table keyed by the cell, as an [`Entry`]: the device value and the
//! host value it mirrors, if any. The entry counts only while it matches the cell:
//!
//! - `host: None` and the cell empty: the device value is the tensor's value (a compiled step
//!   wrote it there, or `to_device` made the tensor); the first host read downloads it into the
//!   cell (copy-on-read), after which the entry mirrors that host value;
//! - `host: Some(v)` and the cell holding that same `Arc`: both copies are current.
//!
//! Every host write replaces the cell's `Arc` (the entry's clone keeps the old one from being
//! written in place), which makes the entry stale: the host value wins and the tensor is back
//! on the CPU, unless the writer re-uploads ([`after_host_write`], used by in-place ops and
//! assignments so that a tensor on the GPU stays there). Without the `cuda` feature no entry
//! can exist and every function here is a no-op.

use crate::error::Result;
use crate::tensor::Storage;
use crate::Device;

#[cfg(feature = "cuda")]
pub(crate) use imp::*;

#[cfg(not(feature = "cuda"))]
mod none {
    use super::*;
    use kiln_ir::Literal;
    use std::sync::Arc;

    pub(crate) fn device_of(_: &Storage) -> Device {
        Device::Cpu
    }

    pub(crate) fn fill_host(_: &Storage) -> Result<Option<Arc<Literal>>> {
        Ok(None)
    }

    pub(crate) fn after_host_write(_: &Storage, _: Device) -> Result<()> {
        Ok(())
    }

    /// Without the feature, `Device::check` admits only the CPU, where values already are.
    pub(crate) fn move_cell(_: &Storage, _: Device) -> Result<()> {
        Ok(())
    }
}
#[cfg(not(feature = "cuda"))]
pub(crate) use none::*;

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use crate::error::Error;
    use kiln_codegen::cuda::{runtime, DeviceTensor};
    use kiln_ir::Literal;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

    type Cell = RwLock<Option<Arc<Literal>>>;

    /// The device copy of one storage cell.
    struct Entry {
        cell: Weak<Cell>,
        value: DeviceTensor,
        /// The host value the device value mirrors (`None`: the device value is the value).
        host: Option<Arc<Literal>>,
    }

    fn table() -> &'static Mutex<HashMap<usize, Entry>> {
        static T: OnceLock<Mutex<HashMap<usize, Entry>>> = OnceLock::new();
        T.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn key(s: &Storage) -> usize {
        Arc::as_ptr(s) as usize
    }

    fn cell_value(s: &Storage) -> Option<Arc<Literal>> {
        s.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn matches(e: &Entry, s: &Storage, cell: &Option<Arc<Literal>>) -> bool {
        e.cell.upgrade().is_some_and(|c| Arc::ptr_eq(&c, s))
            && match (&e.host, cell) {
                (None, None) => true,
                (Some(h), Some(c)) => Arc::ptr_eq(h, c),
                _ => false,
            }
    }

    fn device_error(device: Device, e: runtime::Error) -> Error {
        Error::Device {
            device: device.to_string(),
            why: e.to_string(),
        }
    }

    /// The current device value of a cell, if it has one.
    pub(crate) fn device_value(s: &Storage) -> Option<DeviceTensor> {
        let cell = cell_value(s);
        let t = table().lock().unwrap_or_else(|p| p.into_inner());
        t.get(&key(s))
            .filter(|e| matches(e, s, &cell))
            .map(|e| e.value.clone())
    }

    /// Where a cell's value lives.
    pub(crate) fn device_of(s: &Storage) -> Device {
        match device_value(s) {
            Some(d) => Device::Cuda(d.device().ordinal() as usize),
            None => Device::Cpu,
        }
    }

    /// Records `value` as the cell's device copy, mirroring `host` (which the cell then holds),
    /// or, with `host: None`, as its only value (the cell is emptied). The entry is recorded
    /// before the cell changes, so a concurrent reader sees either the old host value or the
    /// new device value.
    pub(crate) fn set(s: &Storage, value: DeviceTensor, host: Option<Arc<Literal>>) -> Result<()> {
        {
            let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
            // Entries of dropped tensors hold device memory: drop them now.
            t.retain(|_, e| e.cell.strong_count() > 0);
            t.insert(
                key(s),
                Entry {
                    cell: Arc::downgrade(s),
                    value,
                    host: host.clone(),
                },
            );
        }
        let mut cell = s.try_write().map_err(|_| {
            Error::Borrow("an ndarray view of a tensor written on the GPU is alive".into())
        })?;
        *cell = host;
        Ok(())
    }

    /// Forgets the cell's device copy (after making sure the host holds the value).
    pub(crate) fn to_host(s: &Storage) -> Result<()> {
        fill_host(s)?;
        table()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(s));
        Ok(())
    }

    /// The value of an empty cell whose value is on a device: downloaded, stored in the cell
    /// (the entry then mirrors it) and returned. `None` if the cell has no device value.
    pub(crate) fn fill_host(s: &Storage) -> Result<Option<Arc<Literal>>> {
        let value = {
            let t = table().lock().unwrap_or_else(|p| p.into_inner());
            match t.get(&key(s)) {
                Some(e) if matches(e, s, &None) => e.value.clone(),
                _ => return Ok(cell_value(s)),
            }
        };
        let device = Device::Cuda(value.device().ordinal() as usize);
        let lit = Arc::new(value.to_literal().map_err(|e| device_error(device, e))?);
        let mut cell = s.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cell.as_ref() {
            // Another thread filled or wrote it meanwhile.
            return Ok(Some(v.clone()));
        }
        *cell = Some(lit.clone());
        drop(cell);
        let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = t.get_mut(&key(s)) {
            if e.host.is_none() && e.value.ptr() == value.ptr() {
                e.host = Some(lit.clone());
            }
        }
        Ok(Some(lit))
    }

    /// `lit` uploaded to `device`.
    pub(crate) fn upload(device: Device, lit: &Literal) -> Result<DeviceTensor> {
        let Device::Cuda(n) = device else {
            return Err(Error::Device {
                device: device.to_string(),
                why: "not a GPU".into(),
            });
        };
        let dev = runtime::device(n as u32).map_err(|e| device_error(device, e))?;
        DeviceTensor::upload(&dev, lit).map_err(|e| device_error(device, e))
    }

    /// Moves a cell's value to `device` in place (its tensor and every alias follow).
    pub(crate) fn move_cell(s: &Storage, device: Device) -> Result<()> {
        if device_of(s) == device {
            return Ok(());
        }
        match device {
            Device::Cpu => to_host(s),
            Device::Cuda(_) => {
                let Some(host) = fill_host(s)? else {
                    return Err(Error::Device {
                        device: device.to_string(),
                        why: "the tensor has no value to move".into(),
                    });
                };
                let value = upload(device, &host)?;
                set(s, value, Some(host))
            }
        }
    }

    /// After a host write into a cell that was on `was` (its device before the write): a GPU
    /// tensor stays on its GPU (the new value is uploaded).
    pub(crate) fn after_host_write(s: &Storage, was: Device) -> Result<()> {
        if was == Device::Cpu {
            return Ok(());
        }
        let Some(host) = cell_value(s) else {
            return Ok(());
        };
        let value = upload(was, &host)?;
        set(s, value, Some(host))
    }
}
