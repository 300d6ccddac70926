//! Inference with a trained run: overlapping patches on the training grid inside the brain
//! mask, their lesion probabilities averaged where they overlap, the full volume thresholded,
//! written with the source geometry, and PNG overlays of FLAIR, ground truth and prediction.

use super::patches::{self, grid_positions, reconstruct, Subject};
use super::train::{plot_err, read_run_config, TrainConfig};
use crate::error::{Error, Result};
use crate::nifti::Volume;
use crate::nn::models::UNet3d;
use crate::nn::Module;
use crate::Tensor;
use ndarray::{Array3, Axis, Ix3};
use std::path::Path;

/// The default probability threshold of the lesion class.
pub const THRESHOLD: f32 = 0.5;

/// The model of a run (`best.safetensors`, else `last.safetensors`) in evaluation mode, with
/// its configuration.
pub fn load_model(run: &Path) -> Result<(UNet3d, TrainConfig)> {
    let (cfg, _) = read_run_config(run)?;
    let mut net = cfg.build_model()?;
    let best = run.join("best.safetensors");
    let file = if best.is_file() {
        best
    } else {
        run.join("last.safetensors")
    };
    net.load_state_dict(&crate::checkpoint::load(&file)?, true)?;
    net.eval();
    Ok((net, cfg))
}

/// The lesion probability of every voxel of `s`: the network's class-1 probability averaged
/// over the overlapping patches (side `patch`, grid step `stride`) that cover the voxel; 0
/// outside the brain mask (no patch without brain voxels is evaluated).
///
/// The patches go through one compiled forward program in batches of `batch`; the last
/// batch is padded with copies of its first patch, whose outputs are dropped.
pub fn predict_probabilities(
    net: &UNet3d,
    s: &Subject,
    patch: usize,
    stride: usize,
    batch: usize,
) -> Result<Array3<f32>> {
    let starts = grid_positions(s.mask.view(), patch, stride)?;
    let batch = batch.max(1);
    let c = s.image.shape()[0];
    let _ng = crate::NoGradGuard::new();
    let mut step: Option<crate::compile::CompiledStep> = None;
    let mut probs: Vec<Array3<f32>> = Vec::with_capacity(starts.len());
    let vol = patch * patch * patch;
    for chunk in starts.chunks(batch) {
        let mut buf: Vec<f32> = Vec::with_capacity(batch * c * vol);
        for n in 0..batch {
            let st = chunk.get(n).unwrap_or(&chunk[0]);
            buf.extend(s.image_patch(*st, patch).iter());
        }
        let x = Tensor::try_from_vec(buf, [batch, c, patch, patch, patch])?;
        if step.is_none() {
            step = Some(crate::compile::compile(&[&x], |b| {
                Ok(vec![net.try_forward(&b[0])?.slice(1, 1, 2, 1)])
            })?);
        }
        let p = step.as_ref().expect("compiled above").run(&[&x])?[0].try_to_vec::<f32>()?;
        for n in 0..chunk.len() {
            let a =
                Array3::from_shape_vec((patch, patch, patch), p[n * vol..(n + 1) * vol].to_vec())
                    .map_err(|e| Error::shape("predict", e.to_string()))?;
            probs.push(a);
        }
    }
    let mut prob = reconstruct(s.shape(), &starts, &probs, 0.0)?;
    // Lesions are in the brain: the network's answers about the background around it, seen
    // at patch corners only, are dropped.
    prob.zip_mut_with(&s.mask, |p, &m| {
        if !m {
            *p = 0.0;
        }
    });
    Ok(prob)
}

/// A segmented subject.
pub struct Segmentation {
    pub subject: Subject,
    /// The FLAIR volume as read (geometry and raw intensities).
    pub flair: Volume,
    /// Lesion probability per voxel.
    pub probability: Array3<f32>,
    /// `probability >= threshold` (0/1).
    pub mask: Volume,
}

/// Segments the subject in `subject_dir` with the run in `model_dir`.
pub fn segment(model_dir: &Path, subject_dir: &Path, threshold: f32) -> Result<Segmentation> {
    let (net, cfg) = load_model(model_dir)?;
    let (subject, flair) = patches::load_subject(subject_dir, false)?;
    let probability = predict_probabilities(&net, &subject, cfg.patch, cfg.stride, cfg.batch_size)?;
    let bin = probability.mapv(|p| if p >= threshold { 1.0f32 } else { 0.0 });
    let data = match flair.shape().len() {
        3 => bin.into_dyn(),
        _ => bin.insert_axis(Axis(3)).into_dyn(),
    };
    let mask = flair.with_data(data)?;
    Ok(Segmentation {
        subject,
        flair,
        probability,
        mask,
    })
}

/// The lesion mask (probability >= 0.5, values 0/1) of the subject in `subject_dir`, predicted
/// by the run in `model_dir`, with the geometry of the subject's FLAIR image.
pub fn predict_subject(model_dir: &Path, subject_dir: &Path) -> Result<Volume> {
    Ok(segment(model_dir, subject_dir, THRESHOLD)?.mask)
}

/// The axial slices (index `k`) to show: the `n` with the most ground-truth or predicted
/// lesion voxels, in order; evenly spaced through the brain when there are none.
fn pick_slices(
    truth: Option<&Array3<u8>>,
    pred: &Array3<bool>,
    brain: &Array3<bool>,
    n: usize,
) -> Vec<usize> {
    let nz = pred.shape()[2];
    let mut score: Vec<(usize, usize)> = (0..nz)
        .map(|k| {
            let p = pred.index_axis(Axis(2), k).iter().filter(|&&b| b).count();
            let t = truth.map_or(0, |t| {
                t.index_axis(Axis(2), k).iter().filter(|&&v| v == 1).count()
            });
            (p + t, k)
        })
        .collect();
    let mut ks: Vec<usize> = if score.iter().any(|s| s.0 > 0) {
        score.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        score
            .iter()
            .take(n)
            .filter(|s| s.0 > 0)
            .map(|s| s.1)
            .collect()
    } else {
        let with_brain: Vec<usize> = (0..nz)
            .filter(|&k| brain.index_axis(Axis(2), k).iter().any(|&b| b))
            .collect();
        let m = with_brain.len();
        (0..n.min(m))
            .map(|i| with_brain[(2 * i + 1) * m / (2 * n.min(m))])
            .collect()
    };
    ks.sort();
    ks
}

/// A PNG of axial FLAIR slices: ground truth in green, prediction in red, both in yellow.
/// Each slice is drawn with `i` to the right and `j` upwards (radiological display is not
/// attempted), scaled 3x.
pub fn overlays(
    path: &Path,
    flair: &Array3<f32>,
    truth: Option<&Array3<u8>>,
    pred: &Array3<bool>,
    brain: &Array3<bool>,
) -> Result<()> {
    use plotters::prelude::*;
    let ks = pick_slices(truth, pred, brain, 6);
    let (nx, ny) = (flair.shape()[0], flair.shape()[1]);
    let scale = 3usize;
    let cols = ks.len().clamp(1, 3);
    let rows = ks.len().div_ceil(3).max(1);
    let (w, h) = ((nx * scale * cols) as u32, (ny * scale * rows) as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&BLACK).map_err(plot_err)?;
    // Grey levels from the 1st to the 99th percentile of the brain's FLAIR intensities.
    let mut vals: Vec<f32> = flair
        .iter()
        .zip(brain.iter())
        .filter(|(_, &b)| b)
        .map(|(&v, _)| v)
        .collect();
    vals.sort_by(|a, b| a.total_cmp(b));
    let (lo, hi) = if vals.is_empty() {
        (0.0, 1.0)
    } else {
        (
            vals[vals.len() / 100],
            vals[(vals.len() * 99) / 100].max(vals[vals.len() / 100] + 1e-6),
        )
    };
    for (n, &k) in ks.iter().enumerate() {
        let (ox, oy) = ((n % 3) * nx * scale, (n / 3) * ny * scale);
        for i in 0..nx {
            for j in 0..ny {
                let g = (((flair[[i, j, k]] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8;
                let t = truth.is_some_and(|t| t[[i, j, k]] == 1);
                let p = pred[[i, j, k]];
                let c = match (t, p) {
                    (true, true) => RGBColor(255, 230, 0),
                    (true, false) => RGBColor(0, 200, 60),
                    (false, true) => RGBColor(230, 30, 30),
                    (false, false) => RGBColor(g, g, g),
                };
                for a in 0..scale {
                    for b in 0..scale {
                        let x = (ox + i * scale + a) as i32;
                        let y = (oy + (ny - 1 - j) * scale + b) as i32;
                        root.draw_pixel((x, y), &c).map_err(plot_err)?;
                    }
                }
            }
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The FLAIR intensities of a segmentation as a 3-D array.
pub fn flair_array(seg: &Segmentation) -> Result<Array3<f32>> {
    let sh = seg.flair.shape();
    seg.flair
        .data
        .clone()
        .into_shape_with_order((sh[0], sh[1], sh[2]))
        .map_err(|e| Error::shape("overlays", e.to_string()))
}

/// Writes `out` (the thresholded mask as u8) and, with `png`, the overlays.
pub fn write_outputs(
    seg: &Segmentation,
    out: &Path,
    png: Option<&Path>,
    has_truth: bool,
) -> Result<()> {
    crate::nifti::write(out, &seg.mask, crate::nifti::DataType::U8)?;
    if let Some(png) = png {
        let pred: Array3<bool> = seg
            .mask
            .data
            .view()
            .into_shape_with_order(seg.probability.raw_dim())
            .map_err(|e| Error::shape("overlays", e.to_string()))?
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::shape("overlays", e.to_string()))?
            .mapv(|v| v > 0.5);
        let truth = has_truth.then_some(&seg.subject.label);
        overlays(png, &flair_array(seg)?, truth, &pred, &seg.subject.mask)?;
    }
    Ok(())
}
