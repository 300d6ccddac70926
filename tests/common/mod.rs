//! Reading PyTorch reference fixtures (`../shared/fixtures/README.md` describes the format).

#![allow(dead_code)]

use kiln::{DType, Tensor};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One fixture file: its metadata and tensors.
pub struct Fixture {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Fixture, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (_, md) =
            SafeTensors::read_metadata(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                safetensors::Dtype::F32 => Tensor::from_vec(
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                    shape,
                ),
                safetensors::Dtype::F64 => Tensor::from_vec(
                    data.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                    shape,
                ),
                safetensors::Dtype::I64 => Tensor::from_vec(
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                    shape,
                ),
                safetensors::Dtype::BOOL => {
                    Tensor::from_vec(data.iter().map(|&b| b != 0).collect::<Vec<_>>(), shape)
                }
                other => {
                    return Err(format!(
                        "{}: tensor {name} has unsupported dtype {other:?}",
                        path.display()
                    ))
                }
            };
            tensors.insert(name, t);
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Fixture {
            name,
            meta,
            tensors,
        })
    }

    pub fn op(&self) -> &str {
        self.meta.get("op").map(String::as_str).unwrap_or("")
    }

    pub fn json(&self, key: &str) -> serde_json::Value {
        self.meta
            .get(key)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        match self.json(key) {
            serde_json::Value::Array(v) => v
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn tol(&self) -> f64 {
        self.meta
            .get("tol")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1e-4)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor, String> {
        self.tensors
            .get(name)
            .ok_or_else(|| format!("fixture has no tensor `{name}`"))
    }
}

/// The fixture directory: `KILN_FIXTURES`, else `../shared/fixtures/torch`.
pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("KILN_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/torch"),
    }
}

/// All `.safetensors` files of the fixture directory, sorted.
pub fn fixture_files() -> Vec<PathBuf> {
    let dir = fixture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read fixture directory {}: {e} (set KILN_FIXTURES)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Max abs error relative to the reference's max abs value (PyTorch fixtures' `tol` measure);
/// shapes and dtypes must agree; non-float tensors must be equal.
pub fn compare(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> Result<f64, String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, PyTorch has {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let g: Vec<f64> = got
        .try_to_vec::<f64>()
        .map_err(|e| format!("{what}: {e}"))?;
    let w: Vec<f64> = want.to_vec::<f64>();
    if !want.dtype().is_float() {
        if got.dtype() != want.dtype() || g != w {
            return Err(format!(
                "{what}: {:?} values differ from PyTorch's",
                got.dtype()
            ));
        }
        return Ok(0.0);
    }
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = (0.0f64, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let e = if a.is_nan() && b.is_nan() {
            0.0
        } else {
            (a - b).abs()
        };
        if e.is_nan() || e > worst.0 {
            worst = (if e.is_nan() { f64::INFINITY } else { e }, i);
        }
    }
    let rel = worst.0 / scale;
    if rel > tol {
        return Err(format!(
            "{what}: max error {:.3e} relative to max |ref| {:.3e} = {rel:.3e} > tol {tol:e} (at flat index {}: kiln {}, PyTorch {})",
            worst.0, scale, worst.1, g[worst.1], w[worst.1]
        ));
    }
    Ok(rel)
}

pub fn is_float(t: &Tensor) -> bool {
    t.dtype() == DType::F32 || t.dtype() == DType::F64
}
