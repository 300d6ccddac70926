//! The patch pipeline of the tutorial: z-score normalisation inside the brain mask, cubic
//! patches on a regular grid inside the region of interest, optional lesion-balanced sampling,
//! and the reconstruction of a full volume from overlapping patch predictions.
//!
//! Volumes are `ndarray` arrays indexed `[i, j, k]` (NIfTI's voxel order); a subject's image
//! is `[channels, nx, ny, nz]` (FLAIR, T1). A patch of side `p` at `start = [a, b, c]` covers
//! `a..a+p, b..b+p, c..c+p`.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::{Generator, Tensor};
use ndarray::{s, Array3, Array4, ArrayView3, Axis};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The label of "other pathology" voxels, excluded from the loss (`ignore_index`).
pub const IGNORE_LABEL: u8 = 2;
/// The lesion class.
pub const LESION_LABEL: u8 = 1;

fn err(msg: impl Into<String>) -> Error {
    Error::Data {
        path: "lesions::patches".into(),
        msg: msg.into(),
    }
}

/// Z-score normalisation over the mask: `(x - mean) / std`, mean and (population) standard
/// deviation taken over the voxels where `mask` is true, applied to the whole volume (outside
/// the mask the values are then meaningless and are set to 0, the mean, so that the network
/// sees a flat background). Returns the normalised volume and `(mean, std)`.
///
/// Why inside the mask: MR intensities have no absolute scale, and the many zero voxels
/// outside the brain would dominate statistics over the whole field of view.
pub fn zscore_in_mask(
    x: ArrayView3<f32>,
    mask: ArrayView3<bool>,
) -> Result<(Array3<f32>, f64, f64)> {
    if x.shape() != mask.shape() {
        return Err(err(format!(
            "image shape {:?} and mask shape {:?} differ",
            x.shape(),
            mask.shape()
        )));
    }
    let (mut n, mut sum) = (0usize, 0f64);
    for (&v, &m) in x.iter().zip(mask.iter()) {
        if m {
            n += 1;
            sum += v as f64;
        }
    }
    if n == 0 {
        return Err(err("the brain mask is empty"));
    }
    let mean = sum / n as f64;
    let var = x
        .iter()
        .zip(mask.iter())
        .filter(|(_, &m)| m)
        .map(|(&v, _)| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    // A constant image inside the mask has no scale; keep it centred rather than divide by 0.
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    let mut out = Array3::<f32>::zeros(x.raw_dim());
    ndarray::Zip::from(&mut out)
        .and(&x)
        .and(&mask)
        .for_each(|o, &v, &m| {
            if m {
                *o = ((v as f64 - mean) / std) as f32;
            }
        });
    Ok((out, mean, std))
}

/// The starts along one axis of length `n` for patches of side `p` on a grid of step `stride`:
/// `0, stride, 2 stride, ...` while the patch fits, plus `n - p` when the last grid patch stops
/// short of the end, so that the patches cover the whole axis. An error when `n < p`.
pub fn axis_starts(n: usize, p: usize, stride: usize) -> Result<Vec<usize>> {
    if p == 0 || stride == 0 {
        return Err(err("patch size and stride must be positive"));
    }
    if n < p {
        return Err(err(format!(
            "an axis of {n} voxels is shorter than the patch size {p}"
        )));
    }
    let mut v: Vec<usize> = (0..=n - p).step_by(stride).collect();
    if *v.last().expect("0 is always a start") != n - p {
        v.push(n - p);
    }
    Ok(v)
}

/// The patch starts on the `stride` grid (see [`axis_starts`]) whose patch contains at least
/// one voxel of `roi`. Every ROI voxel lies in at least one of them, because the full grid
/// covers the volume and only patches without ROI voxels are dropped.
pub fn grid_positions(roi: ArrayView3<bool>, p: usize, stride: usize) -> Result<Vec<[usize; 3]>> {
    let sh = roi.shape();
    let (a, b, c) = (
        axis_starts(sh[0], p, stride)?,
        axis_starts(sh[1], p, stride)?,
        axis_starts(sh[2], p, stride)?,
    );
    let mut out = Vec::new();
    for &i in &a {
        for &j in &b {
            for &k in &c {
                if roi
                    .slice(s![i..i + p, j..j + p, k..k + p])
                    .iter()
                    .any(|&m| m)
                {
                    out.push([i, j, k]);
                }
            }
        }
    }
    Ok(out)
}

/// Averages overlapping patch values into a volume of `shape`: each voxel gets the mean of the
/// patches covering it, and `fill` where none does. `patches[n]` is `[p, p, p]` at
/// `starts[n]`.
pub fn reconstruct(
    shape: [usize; 3],
    starts: &[[usize; 3]],
    patches: &[Array3<f32>],
    fill: f32,
) -> Result<Array3<f32>> {
    if starts.len() != patches.len() {
        return Err(err(format!(
            "{} patch positions for {} patches",
            starts.len(),
            patches.len()
        )));
    }
    let mut sum = Array3::<f64>::zeros(shape);
    let mut count = Array3::<u32>::zeros(shape);
    for (st, pa) in starts.iter().zip(patches) {
        let d = pa.shape();
        if st[0] + d[0] > shape[0] || st[1] + d[1] > shape[1] || st[2] + d[2] > shape[2] {
            return Err(err(format!(
                "a patch {d:?} at {st:?} does not fit in {shape:?}"
            )));
        }
        let win = s![
            st[0]..st[0] + d[0],
            st[1]..st[1] + d[1],
            st[2]..st[2] + d[2]
        ];
        sum.slice_mut(win).zip_mut_with(pa, |a, &b| *a += b as f64);
        count.slice_mut(win).mapv_inplace(|c| c + 1);
    }
    let mut out = Array3::<f32>::from_elem(shape, fill);
    ndarray::Zip::from(&mut out)
        .and(&sum)
        .and(&count)
        .for_each(|o, &s, &c| {
            if c > 0 {
                *o = (s / c as f64) as f32;
            }
        });
    Ok(out)
}

/// One subject, normalised and in memory.
#[derive(Clone, Debug)]
pub struct Subject {
    /// An identifier (the directory name).
    pub id: String,
    /// `[channels, nx, ny, nz]`, each channel z-scored inside `mask`.
    pub image: Array4<f32>,
    /// `[nx, ny, nz]`: 0 background, 1 lesion, 2 ignored.
    pub label: Array3<u8>,
    /// The brain mask (the region of interest).
    pub mask: Array3<bool>,
}

impl Subject {
    /// Normalises each channel of `raw` (`[channels, nx, ny, nz]`) inside `mask`.
    pub fn new(
        id: impl Into<String>,
        raw: Array4<f32>,
        label: Array3<u8>,
        mask: Array3<bool>,
    ) -> Result<Subject> {
        let sh = raw.shape();
        if sh[1..] != *label.shape() || label.shape() != mask.shape() {
            return Err(err(format!(
                "image {:?}, label {:?} and mask {:?} do not match",
                raw.shape(),
                label.shape(),
                mask.shape()
            )));
        }
        let mut image = Array4::<f32>::zeros(raw.raw_dim());
        for (c, ch) in raw.axis_iter(Axis(0)).enumerate() {
            let (z, _, _) = zscore_in_mask(ch, mask.view())?;
            image.index_axis_mut(Axis(0), c).assign(&z);
        }
        Ok(Subject {
            id: id.into(),
            image,
            label,
            mask,
        })
    }

    pub fn shape(&self) -> [usize; 3] {
        let s = self.label.shape();
        [s[0], s[1], s[2]]
    }

    /// The image patch `[channels, p, p, p]` at `st`.
    pub fn image_patch(&self, st: [usize; 3], p: usize) -> Array4<f32> {
        self.image
            .slice(s![.., st[0]..st[0] + p, st[1]..st[1] + p, st[2]..st[2] + p])
            .to_owned()
    }

    /// The label patch `[p, p, p]` at `st`.
    pub fn label_patch(&self, st: [usize; 3], p: usize) -> Array3<u8> {
        self.label
            .slice(s![st[0]..st[0] + p, st[1]..st[1] + p, st[2]..st[2] + p])
            .to_owned()
    }

    /// Whether the patch at `st` holds a lesion voxel.
    pub fn has_lesion(&self, st: [usize; 3], p: usize) -> bool {
        self.label
            .slice(s![st[0]..st[0] + p, st[1]..st[1] + p, st[2]..st[2] + p])
            .iter()
            .any(|&l| l == LESION_LABEL)
    }
}

/// Every grid patch inside the ROI of every subject, split into those with and without a
/// lesion voxel: the pool epochs draw from.
#[derive(Clone, Debug)]
pub struct PatchIndex {
    pub patch: usize,
    pub lesion: Vec<(usize, [usize; 3])>,
    pub other: Vec<(usize, [usize; 3])>,
}

impl PatchIndex {
    pub fn new(subjects: &[Subject], patch: usize, stride: usize) -> Result<PatchIndex> {
        let (mut lesion, mut other) = (Vec::new(), Vec::new());
        for (n, s) in subjects.iter().enumerate() {
            for st in grid_positions(s.mask.view(), patch, stride)? {
                if s.has_lesion(st, patch) {
                    lesion.push((n, st));
                } else {
                    other.push((n, st));
                }
            }
        }
        if lesion.is_empty() && other.is_empty() {
            return Err(err("no patch inside the brain masks"));
        }
        Ok(PatchIndex {
            patch,
            lesion,
            other,
        })
    }

    /// All patches, lesion patches first.
    pub fn all(&self) -> Vec<(usize, [usize; 3])> {
        self.lesion.iter().chain(&self.other).copied().collect()
    }

    /// `count` patches drawn with replacement from `g`: with `lesion_fraction = Some(f)`,
    /// exactly `round(f * count)` of them from the lesion patches (all from the others if
    /// there are none) and the rest from the patches without lesions; with `None`, uniformly
    /// from all grid patches (the tutorial). Balancing matters because lesions fill well under
    /// 1% of the brain: most uniform patches hold no lesion at all.
    pub fn sample(
        &self,
        count: usize,
        lesion_fraction: Option<f64>,
        g: &mut Generator,
    ) -> Vec<(usize, [usize; 3])> {
        let pick = |pool: &[(usize, [usize; 3])], g: &mut Generator| {
            pool[g.below(pool.len() as u64) as usize]
        };
        match lesion_fraction {
            None => {
                let all = self.all();
                (0..count).map(|_| pick(&all, g)).collect()
            }
            Some(f) => {
                let mut n_lesion = ((f.clamp(0.0, 1.0) * count as f64).round()) as usize;
                if self.lesion.is_empty() {
                    n_lesion = 0;
                }
                if self.other.is_empty() {
                    n_lesion = count;
                }
                let mut v: Vec<_> = (0..n_lesion).map(|_| pick(&self.lesion, g)).collect();
                v.extend((n_lesion..count).map(|_| pick(&self.other, g)));
                v
            }
        }
    }
}

/// Patches of a set of subjects as a [`Dataset`] of `(image [C, p, p, p] f32, label [p, p, p]
/// i64)`: cut on demand (on the loader's background thread), so an epoch holds only positions.
pub struct PatchDataset {
    pub subjects: Arc<Vec<Subject>>,
    pub items: Vec<(usize, [usize; 3])>,
    pub patch: usize,
}

impl Dataset for PatchDataset {
    type Sample = (Tensor, Tensor);

    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<(Tensor, Tensor)> {
        let &(n, st) = self
            .items
            .get(index)
            .ok_or_else(|| err(format!("patch {index} of {}", self.items.len())))?;
        let s = &self.subjects[n];
        let p = self.patch;
        let img = s.image_patch(st, p);
        let c = img.shape()[0];
        let x = Tensor::try_from_vec(img.into_iter().collect::<Vec<f32>>(), [c, p, p, p])?;
        let y = Tensor::try_from_vec(
            s.label_patch(st, p)
                .into_iter()
                .map(|l| l as i64)
                .collect::<Vec<i64>>(),
            [p, p, p],
        )?;
        Ok((x, y))
    }
}

/// Splits subject indices `0..n` into training and validation sets: a seeded shuffle, then
/// the last `round(n * val_fraction)` (at least 1 when `n >= 2`) are for validation.
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut g = Generator::new(seed);
    for i in (1..n).rev() {
        let j = g.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    let mut nv = (n as f64 * val_fraction.clamp(0.0, 1.0)).round() as usize;
    if n >= 2 && nv == 0 && val_fraction > 0.0 {
        nv = 1;
    }
    nv = nv.min(n.saturating_sub(1));
    let val = idx.split_off(n - nv);
    (idx, val)
}

/// The files of a subject directory (the tutorial's cohort layout).
pub const FLAIR_FILE: &str = "FLAIR_brain.nii.gz";
pub const T1_FILE: &str = "T1_brain.nii.gz";
pub const LABEL_FILE: &str = "wmh.nii.gz";
pub const MASK_FILE: &str = "brainmask.nii.gz";

fn read3(path: &Path) -> Result<(crate::nifti::Volume, Array3<f32>)> {
    let v = crate::nifti::read(path)?;
    let sh = v.shape().to_vec();
    if sh.len() != 3 && !(sh.len() == 4 && sh[3] == 1) {
        return Err(Error::Data {
            path: path.display().to_string(),
            msg: format!("expected a 3-D volume, got shape {sh:?}"),
        });
    }
    let a = v
        .data
        .clone()
        .into_shape_with_order((sh[0], sh[1], sh[2]))
        .map_err(|e| Error::Data {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
    Ok((v, a))
}

/// A subject read from `dir`, normalised, with the FLAIR volume (its geometry, and its raw
/// intensities for overlays). Without `wmh.nii.gz` (or with `need_label` false and the file
/// missing) the label is all background.
pub fn load_subject(dir: &Path, need_label: bool) -> Result<(Subject, crate::nifti::Volume)> {
    let (flair_vol, flair) = read3(&dir.join(FLAIR_FILE))?;
    let (_, t1) = read3(&dir.join(T1_FILE))?;
    let (_, mask) = read3(&dir.join(MASK_FILE))?;
    let label_path = dir.join(LABEL_FILE);
    let label = if need_label || label_path.exists() {
        read3(&label_path)?.1
    } else {
        Array3::zeros(flair.raw_dim())
    };
    for (what, a) in [("T1", &t1), ("brain mask", &mask), ("label", &label)] {
        if a.shape() != flair.shape() {
            return Err(Error::Data {
                path: dir.display().to_string(),
                msg: format!(
                    "the {what} has shape {:?}, FLAIR {:?}",
                    a.shape(),
                    flair.shape()
                ),
            });
        }
    }
    let sh = flair.shape();
    let mut raw = Array4::<f32>::zeros((2, sh[0], sh[1], sh[2]));
    raw.index_axis_mut(Axis(0), 0).assign(&flair);
    raw.index_axis_mut(Axis(0), 1).assign(&t1);
    let label = label.mapv(|v| v.round().clamp(0.0, 255.0) as u8);
    let mask = mask.mapv(|v| v > 0.5);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((Subject::new(id, raw, label, mask)?, flair_vol))
}

/// The subject directories of a cohort: the subdirectories of `dir` holding a FLAIR image,
/// sorted by name.
pub fn cohort_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Data {
        path: dir.display().to_string(),
        msg: format!("cannot list the cohort: {e}"),
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(FLAIR_FILE).is_file())
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Data {
            path: dir.display().to_string(),
            msg: format!("no subject directories with {FLAIR_FILE}"),
        });
    }
    Ok(v)
}

/// Every subject of a cohort, with labels.
pub fn load_cohort(dir: &Path) -> Result<Vec<Subject>> {
    cohort_dirs(dir)?
        .iter()
        .map(|d| load_subject(d, true).map(|(s, _)| s))
        .collect()
}
