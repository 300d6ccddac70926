//! `kiln nifti ...`.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum NiftiCommand {
    /// Prints one JSON object on one line: shape, datatype, pixdim, affine, min, max, mean, sum.
    Info {
        /// A .nii or .nii.gz file.
        file: PathBuf,
    },
}

pub fn run(cmd: NiftiCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        NiftiCommand::Info { file } => {
            let vol = crate::nifti::read(&file)?;
            println!("{}", info_json(&vol));
            Ok(())
        }
    }
}

/// The one-line JSON of `kiln nifti info`: `shape`, `datatype` (on disk, NumPy's name),
/// `pixdim` (the spatial voxel sizes), `affine` (4x4, rows) and `min`, `max`, `mean`, `sum` of
/// the scaled voxel values (NaNs skipped; null when every voxel is NaN).
pub fn info_json(vol: &crate::nifti::Volume) -> String {
    let (mut lo, mut hi, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0u64);
    for &v in vol.data.iter() {
        if v.is_nan() {
            continue;
        }
        let v = v as f64;
        lo = lo.min(v);
        hi = hi.max(v);
        sum += v;
        n += 1;
    }
    let num = |x: f64| -> serde_json::Value {
        if n == 0 {
            serde_json::Value::Null
        } else {
            serde_json::json!(x)
        }
    };
    let mean = if n == 0 { f64::NAN } else { sum / n as f64 };
    let j = |v: serde_json::Value| serde_json::to_string(&v).expect("JSON of plain values");
    // Written by hand to keep the keys in the documented order.
    format!(
        "{{\"shape\":{},\"datatype\":{},\"pixdim\":{},\"affine\":{},\"min\":{},\"max\":{},\"mean\":{},\"sum\":{}}}",
        j(serde_json::json!(vol.shape())),
        j(serde_json::json!(vol.header.datatype().name())),
        j(serde_json::json!(vol.header.pixdim())),
        j(serde_json::json!(vol.header.affine())),
        j(num(lo)),
        j(num(hi)),
        j(num(mean)),
        j(num(sum)),
    )
}
