//! Checkpoints: state dicts in the safetensors format, with PyTorch's names and layouts.
//!
//! A checkpoint written here loads in PyTorch (`safetensors.torch.load_file`, then
//! `model.load_state_dict`) and one written by PyTorch's `save_file` loads here: tensors are
//! row-major little-endian with PyTorch's shapes (`conv1.weight` is `[out, in, kh, kw]`), and
//! the names are the modules' dotted paths. The element types are f32, f64, i64 and bool, the
//! ones kiln computes with; any other dtype in a file is reported, not converted.
//!
//! [`save`] is atomic: the bytes go to a temporary file in the target's directory, which is
//! flushed to disk and then renamed over the target, and the directory entry is flushed too.
//! A crash or a failed write at any point leaves either the old checkpoint or the new one,
//! never a mixture. [`load`] never panics on a bad file: a missing, truncated or corrupt file
//! or an unsupported dtype is an [`Error::Data`] naming the file and the problem.
//!
//! ```no_run
//! use kiln::nn::{LeNet, Module};
//! let mut g = kiln::Generator::new(0);
//! let net = LeNet::new(&mut g);
//! kiln::checkpoint::save("lenet.safetensors", &net.state_dict())?;
//! net.load_state_dict(&kiln::checkpoint::load("lenet.safetensors")?, true)?;
//! # Ok::<(), kiln::Error>(())
//! ```

pub use crate::nn::StateDict;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use kiln_ir::{Data, Literal};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn data_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// The little-endian bytes of a literal and its safetensors dtype.
fn encode(lit: &Literal) -> (Dtype, Vec<u8>) {
    match &lit.data {
        Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::Bool(v) => (Dtype::BOOL, v.iter().map(|&b| b as u8).collect()),
    }
}

/// A tensor from a safetensors view; `None` for a dtype kiln does not hold.
fn decode(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Option<Literal> {
    let data = match dtype {
        Dtype::F32 => Data::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Data::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Dtype::I64 => Data::I64(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Dtype::BOOL => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        _ => return None,
    };
    Literal::new(shape.to_vec(), data).ok()
}

/// The bytes of a safetensors file holding `state` (its tensors realised first) and its
/// metadata.
pub fn to_bytes(state: &StateDict) -> Result<Vec<u8>> {
    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(state.len());
    for (name, t) in state.iter() {
        let lit = t.literal()?;
        let (dtype, bytes) = encode(&lit);
        encoded.push((name.to_string(), dtype, lit.shape.clone(), bytes));
    }
    let mut views = Vec::with_capacity(encoded.len());
    for (name, dtype, shape, bytes) in &encoded {
        let view = TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| Error::Data {
            path: "<checkpoint>".into(),
            msg: format!("tensor {name}: {e}"),
        })?;
        views.push((name.as_str(), view));
    }
    let meta: Option<HashMap<String, String>> = (!state.metadata().is_empty()).then(|| {
        state
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    safetensors::serialize(views, meta).map_err(|e| Error::Data {
        path: "<checkpoint>".into(),
        msg: format!("cannot serialise the state dict: {e}"),
    })
}

/// A state dict from the bytes of a safetensors file; `origin` names the source in errors.
/// Tensors are in name order; the header's `__metadata__` becomes the state's metadata.
pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<StateDict> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        data_err(
            origin,
            format!(
                "not a valid safetensors file (truncated or corrupt? {} bytes): {e}",
                bytes.len()
            ),
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| data_err(origin, format!("not a valid safetensors file: {e}")))?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut state = StateDict::new();
    for name in names {
        let view = st
            .tensor(name)
            .map_err(|e| data_err(origin, format!("tensor {name}: {e}")))?;
        let lit = decode(view.dtype(), view.shape(), view.data()).ok_or_else(|| {
            data_err(
                origin,
                format!(
                    "tensor {name} has dtype {:?}, which kiln does not support (F32, F64, I64 and BOOL are)",
                    view.dtype()
                ),
            )
        })?;
        state.insert(name, Tensor::from_literal(lit));
    }
    if let Some(m) = header.metadata() {
        state
            .metadata_mut()
            .extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    state.set_source(Some(origin.display().to_string()));
    Ok(state)
}

/// Reads a checkpoint: a state dict whose errors in `load_state_dict` name this file.
pub fn load(path: impl AsRef<Path>) -> Result<StateDict> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| data_err(path, format!("cannot read: {e}")))?;
    from_bytes(&bytes, path)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `state` to `path` atomically (see the module docs): the target is replaced only
/// once the new file is complete and on disk; on any error the target is untouched and the
/// temporary file removed.
pub fn save(path: impl AsRef<Path>, state: &StateDict) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(state).map_err(|e| match e {
        Error::Data { msg, .. } => data_err(path, msg),
        e => e,
    })?;
    write_atomic(path, &bytes)
}

/// The directory holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| data_err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let (tmp, mut file) = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(data_err(
                    path,
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                ))
            }
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write the temporary file {}: {e}", tmp.display()))
        .and_then(|_| {
            drop(file);
            fs::rename(&tmp, path).map_err(|e| {
                format!(
                    "cannot move the temporary file {} over the target: {e}",
                    tmp.display()
                )
            })
        });
    if let Err(msg) = written {
        // The target was not touched; leave nothing behind.
        let _ = fs::remove_file(&tmp);
        return Err(data_err(path, msg));
    }
    sync_dir(&dir).map_err(|e| {
        data_err(
            path,
            format!(
                "written, but the directory {} could not be flushed: {e}",
                dir.display()
            ),
        )
    })
}

/// Flushes a directory entry (the rename) to disk. Only Unix can open a directory for this;
/// elsewhere the rename is left to the file system.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
