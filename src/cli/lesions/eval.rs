//! `kiln lesions eval`: the tutorial's lesion metrics (definitions in
//! [`crate::lesions::metrics`]).
//!
//! - `kiln lesions eval GT PRED` reads two NIfTI volumes (GT labels 0/1/2, prediction > 0.5)
//!   and prints one JSON object on one line: `dsc`, `tpf`, `ppv`, `fpf`, `volume_diff`, `hd95`
//!   (mm), the volumes in mm³ and the lesion counts; undefined values are `null`.
//! - `kiln lesions eval --data DIR --model RUN` segments every subject of the cohort in `DIR`
//!   with the trained run `RUN`, compares each with its `wmh.nii.gz`, and prints pandas'
//!   `describe()` statistics per metric ([`crate::lesions::table`]); `--per-subject` first
//!   prints each subject's JSON line.

use std::path::{Path, PathBuf};

use crate::lesions::metrics::{self, Metrics};
use crate::lesions::{infer, patches, table};
use crate::nifti::{self, Volume};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["gt", "data"])))]
pub struct EvalArgs {
    /// Ground-truth label volume (NIfTI): 0 background, 1 lesion, 2 other pathology (ignored).
    #[arg(requires = "pred")]
    pub gt: Option<PathBuf>,
    /// Predicted volume (NIfTI): a 0/1 mask or a probability map; foreground is > 0.5.
    pub pred: Option<PathBuf>,
    /// Cohort directory: one subdirectory per subject with FLAIR_brain, T1_brain, brainmask and
    /// the ground truth wmh.nii.gz.
    #[arg(long, requires = "model", conflicts_with_all = ["gt", "pred"])]
    pub data: Option<PathBuf>,
    /// Run directory of `kiln lesions train` whose model segments each subject.
    #[arg(long, requires = "data")]
    pub model: Option<PathBuf>,
    /// Cohort form: print each subject's metrics (one JSON object per line) before the table.
    #[arg(long, requires = "data")]
    pub per_subject: bool,
}

pub fn run(args: EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    match (&args.gt, &args.pred, &args.data, &args.model) {
        (Some(gt), Some(pred), None, None) => {
            let g = nifti::read(gt)?;
            let p = nifti::read(pred)?;
            let m = compare(gt, &g, pred, &p)?;
            println!("{}", m.to_json());
            Ok(())
        }
        (None, None, Some(data), Some(model)) => {
            let rows = evaluate_cohort(data, model, args.per_subject)?;
            print!("{}", table::summarize(&rows));
            Ok(())
        }
        // clap's groups and `requires` rule out every other combination.
        _ => Err("give either GT PRED, or --data DIR --model RUN".into()),
    }
}

/// The metrics of the prediction `p` (read from `pred`) against the truth `g` (from `gt`),
/// after checking that they share a shape and voxel sizes; errors name both files.
pub fn compare(gt: &Path, g: &Volume, pred: &Path, p: &Volume) -> crate::Result<Metrics> {
    let (gn, pn) = (gt.display().to_string(), pred.display().to_string());
    let geometry_err = |msg: String| crate::Error::Data {
        path: gn.clone(),
        msg,
    };
    if g.shape() != p.shape() {
        return Err(geometry_err(format!(
            "shape {:?} differs from the shape {:?} of {pn}",
            g.shape(),
            p.shape()
        )));
    }
    let (sg, sp) = (g.header.pixdim(), p.header.pixdim());
    if !sg.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(geometry_err(format!(
            "voxel size {sg:?} is not three positive sizes in mm"
        )));
    }
    // pixdim is stored as f32; allow for a rounding of its last bits between writers.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
    if !sg.iter().zip(&sp).all(|(&a, &b)| close(a, b)) {
        return Err(geometry_err(format!(
            "voxel size {sg:?} mm differs from the voxel size {sp:?} mm of {pn}"
        )));
    }
    metrics::evaluate_volumes(&g.data, &gn, &p.data, &pn, sg)
}

/// Segments every subject of the cohort in `data` with the run `model` and measures it against
/// the subject's `wmh.nii.gz`; returns (subject, metrics) rows in subject order, printing each
/// row's JSON line first when `print_rows`.
pub fn evaluate_cohort(
    data: &Path,
    model: &Path,
    print_rows: bool,
) -> crate::Result<Vec<(String, Metrics)>> {
    let dirs = patches::cohort_dirs(data)?;
    let mut rows = Vec::with_capacity(dirs.len());
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let gt_path = dir.join(patches::LABEL_FILE);
        if !gt_path.is_file() {
            return Err(crate::Error::Data {
                path: gt_path.display().to_string(),
                msg: "missing: the cohort form needs each subject's ground truth".into(),
            });
        }
        log::info!("evaluating {name}");
        let g = nifti::read(&gt_path)?;
        let p = infer::predict_subject(model, dir)?;
        let pred_name = PathBuf::from(format!("prediction for {}", dir.display()));
        let m = compare(&gt_path, &g, &pred_name, &p)?;
        if print_rows {
            println!("{{\"subject\":{},{}", json_string(&name), &m.to_json()[1..]);
        }
        rows.push((name, m));
    }
    Ok(rows)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
