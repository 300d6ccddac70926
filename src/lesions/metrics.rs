//! Lesion-segmentation metrics of a prediction against a ground truth, as the tutorial's
//! evaluation defines them, on 3-D arrays (so they are testable without files).
//!
//! # Labels
//!
//! The ground truth (GT) is a label map: `0` background, `1` lesion, `2` other pathology. Label 2
//! is **ignored**: its voxels are removed from the prediction before anything is measured, so
//! they count neither as true nor as false positives in the voxel-wise metrics (Dice, volumes,
//! HD95), and a predicted component that lies partly in label 2 is cut there before the
//! lesion-wise matching (a component lying wholly in label 2 disappears, one that label 2
//! splits becomes several). This is the choice of the training loss too (`ignore_index`): the
//! network is neither rewarded nor punished for what it says about other pathology.
//!
//! The prediction is a binary mask: a voxel is foreground when its value is `> 0.5`, which
//! reads a 0/1 label map and a lesion-probability map alike.
//!
//! # Definitions
//!
//! With `P` the prediction's foreground (label-2 voxels removed) and `G` the GT's label-1 voxels:
//!
//! - **Dice** `dsc = 2|P ∩ G| / (|P| + |G|)`, and `1.0` when both are empty (a perfect empty
//!   prediction of an empty truth).
//! - **Lesions** are the connected components of a mask with face connectivity (6-connectivity
//!   in 3-D: voxels touching only along an edge or at a corner are separate lesions), which is
//!   the default structuring element of `scipy.ndimage.label`.
//! - **Lesion-wise true-positive fraction** `tpf` = the fraction of GT lesions that overlap at
//!   least one predicted voxel (undefined without GT lesions).
//! - **Lesion-wise positive predictive value** `ppv` = the fraction of predicted lesions that
//!   overlap at least one GT lesion voxel (the tutorial's definition; undefined without
//!   predicted lesions).
//! - **Lesion-wise false-positive fraction** `fpf = 1 - ppv`: the fraction of predicted lesions
//!   that touch no GT lesion.
//! - **Volume difference** `volume_diff = (|P| - |G|) / |G|`, a signed fraction (positive when
//!   the prediction is too large; undefined when `G` is empty); the absolute volumes are
//!   reported in mm³, a voxel's volume being the product of the voxel sizes (NIfTI `pixdim`).
//! - **HD95**, the 95th-percentile symmetric Hausdorff distance in mm: the *boundary* of a mask
//!   is its voxels that have at least one of their 6 face neighbours outside the mask, a
//!   neighbour beyond the edge of the volume counting as outside (this is medpy's
//!   `mask ^ binary_erosion(mask, generate_binary_structure(3, 1))`, whose erosion has border
//!   value 0). For every boundary voxel of `P` take the Euclidean distance in mm to the nearest
//!   boundary voxel of `G`, and for every boundary voxel of `G` the distance to the nearest
//!   boundary voxel of `P`; HD95 is the 95th percentile of these two lists **concatenated**,
//!   with NumPy's default linear interpolation (`np.percentile(np.hstack((d_pg, d_gp)), 95)`,
//!   medpy's `hd95`). MONAI's `compute_hausdorff_distance(percentile=95)` instead takes the
//!   larger of the two directed 95th percentiles, which can differ. The distances come from an
//!   exact Euclidean distance transform ([`squared_edt`]), not from comparing all pairs.
//!
//! Undefined values (a ratio over zero lesions, a volume difference over an empty truth, a
//! distance to an empty mask: HD95 is undefined when `P` or `G` is empty, including both) are
//! `None` here and `null` in the JSON form.

use ndarray::{s, Array3, ArrayD, ArrayView3, ArrayViewMut1, Axis, Ix3};

use super::table::quantile;
use crate::error::{Error, Result};

/// The GT label of a lesion voxel.
pub const LESION: u8 = 1;
/// The GT label of other pathology, ignored by every metric (see the module docs).
pub const IGNORE: u8 = 2;

/// The metrics of one prediction against one ground truth (definitions in the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Voxel-wise Dice, in `[0, 1]`.
    pub dsc: f64,
    /// Lesion-wise true-positive fraction; `None` without GT lesions.
    pub tpf: Option<f64>,
    /// Lesion-wise positive predictive value; `None` without predicted lesions.
    pub ppv: Option<f64>,
    /// Lesion-wise false-positive fraction `1 - ppv`; `None` without predicted lesions.
    pub fpf: Option<f64>,
    /// `(|P| - |G|) / |G|`; `None` when the GT has no lesion voxel.
    pub volume_diff: Option<f64>,
    /// 95th-percentile symmetric surface distance in mm; `None` when either mask is empty.
    pub hd95: Option<f64>,
    /// `|G|` in mm³.
    pub gt_volume_mm3: f64,
    /// `|P|` in mm³.
    pub pred_volume_mm3: f64,
    /// Number of GT lesions (6-connected components of label 1).
    pub gt_lesions: usize,
    /// Number of predicted lesions (components of `P`, label-2 voxels removed).
    pub pred_lesions: usize,
    /// GT lesions overlapping the prediction (the numerator of `tpf`).
    pub gt_lesions_detected: usize,
    /// Predicted lesions overlapping a GT lesion (the numerator of `ppv`).
    pub pred_lesions_true: usize,
}

impl Metrics {
    /// The real-valued metrics by name, in the order of the JSON object (counts included as
    /// numbers), for tables.
    pub fn values(&self) -> Vec<(&'static str, Option<f64>)> {
        vec![
            ("dsc", Some(self.dsc)),
            ("tpf", self.tpf),
            ("ppv", self.ppv),
            ("fpf", self.fpf),
            ("volume_diff", self.volume_diff),
            ("hd95", self.hd95),
            ("gt_volume_mm3", Some(self.gt_volume_mm3)),
            ("pred_volume_mm3", Some(self.pred_volume_mm3)),
            ("gt_lesions", Some(self.gt_lesions as f64)),
            ("pred_lesions", Some(self.pred_lesions as f64)),
        ]
    }

    /// One JSON object on one line. Undefined and non-finite values are `null` (JSON has no
    /// NaN); counts are integers.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (name, v) in self.values().into_iter().take(8) {
            s.push_str(&format!("\"{name}\":{},", json_number(v)));
        }
        s.push_str(&format!(
            "\"gt_lesions\":{},\"pred_lesions\":{},\"gt_lesions_detected\":{},\"pred_lesions_true\":{}}}",
            self.gt_lesions, self.pred_lesions, self.gt_lesions_detected, self.pred_lesions_true
        ));
        s
    }
}

/// A JSON number, or `null` for `None`, NaN and infinities.
fn json_number(v: Option<f64>) -> String {
    match v {
        // Rust's `Debug` for f64 is the shortest string that reads back to the same value,
        // with a `.0` on integers (so readers see a float) and an exponent `1e-7` for very
        // small or large values: a valid JSON number either way.
        Some(x) if x.is_finite() => format!("{x:?}"),
        _ => "null".to_string(),
    }
}

/// A data error about the array called `what` (a file name in the CLI).
fn data_err(what: &str, msg: impl Into<String>) -> Error {
    Error::Data {
        path: what.to_string(),
        msg: msg.into(),
    }
}

/// `a` as a 3-D view: 3-D arrays as they are, higher-rank arrays whose extra trailing axes all
/// have size 1 (a NIfTI `[nx, ny, nz, 1]`) with those axes dropped.
fn as_3d<'a>(a: &'a ArrayD<f32>, what: &str) -> Result<ArrayView3<'a, f32>> {
    let shape = a.shape();
    if shape.len() < 3 || shape[3..].iter().any(|&n| n != 1) {
        return Err(data_err(
            what,
            format!("expected a 3-D volume, got shape {shape:?}"),
        ));
    }
    let mut v = a.view();
    while v.ndim() > 3 {
        let last = Axis(v.ndim() - 1);
        v = v.index_axis_move(last, 0);
    }
    v.into_dimensionality::<Ix3>()
        .map_err(|e| data_err(what, e.to_string()))
}

/// The GT label map of `a` (values 0, 1, 2, stored as floats in the file). A value further than
/// 1e-3 from one of these labels is an error naming the voxel, since guessing would change the
/// metrics silently.
pub fn gt_labels(a: &ArrayD<f32>, what: &str) -> Result<Array3<u8>> {
    let v = as_3d(a, what)?;
    let mut out = Array3::<u8>::zeros(v.raw_dim());
    for (idx, &x) in v.indexed_iter() {
        let r = x.round();
        if !((x - r).abs() <= 1e-3 && (0.0..=2.0).contains(&r)) {
            return Err(data_err(
                what,
                format!(
                    "voxel {:?} has value {x}, not a ground-truth label (0 background, 1 lesion, 2 ignored)",
                    [idx.0, idx.1, idx.2]
                ),
            ));
        }
        out[idx] = r as u8;
    }
    Ok(out)
}

/// The prediction's foreground: values `> 0.5` (a 0/1 label map or a probability map). NaN is an
/// error naming the voxel.
pub fn pred_mask(a: &ArrayD<f32>, what: &str) -> Result<Array3<bool>> {
    let v = as_3d(a, what)?;
    if let Some((idx, _)) = v.indexed_iter().find(|(_, x)| x.is_nan()) {
        return Err(data_err(
            what,
            format!("voxel {:?} is NaN", [idx.0, idx.1, idx.2]),
        ));
    }
    Ok(v.mapv(|x| x > 0.5))
}

/// Checks that the voxel sizes are finite and positive (they scale distances and volumes).
fn check_spacing(spacing: [f64; 3]) -> Result<()> {
    if spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        Ok(())
    } else {
        Err(data_err(
            "voxel size",
            format!("{spacing:?} is not three finite positive sizes in mm"),
        ))
    }
}

/// All metrics of the float volumes `gt` (labels 0/1/2) and `pred` (foreground `> 0.5`), whose
/// voxels measure `spacing` mm along the three axes. `gt_name`/`pred_name` name them in errors.
pub fn evaluate_volumes(
    gt: &ArrayD<f32>,
    gt_name: &str,
    pred: &ArrayD<f32>,
    pred_name: &str,
    spacing: [f64; 3],
) -> Result<Metrics> {
    let g = gt_labels(gt, gt_name)?;
    let p = pred_mask(pred, pred_name)?;
    if g.dim() != p.dim() {
        return Err(data_err(
            gt_name,
            format!(
                "shape {:?} differs from the shape {:?} of {pred_name}",
                g.shape(),
                p.shape()
            ),
        ));
    }
    evaluate(g.view(), p.view(), spacing)
}

/// All metrics of the GT label map `gt` (0/1/2) and the predicted mask `pred` with voxel sizes
/// `spacing` (mm along axes 0, 1, 2). Errors on different shapes, bad voxel sizes, or a volume
/// too large for 32-bit component labels.
pub fn evaluate(gt: ArrayView3<u8>, pred: ArrayView3<bool>, spacing: [f64; 3]) -> Result<Metrics> {
    if gt.dim() != pred.dim() {
        return Err(data_err(
            "metrics",
            format!(
                "ground truth of shape {:?} and prediction of shape {:?} differ",
                gt.shape(),
                pred.shape()
            ),
        ));
    }
    check_spacing(spacing)?;
    if gt.len() > u32::MAX as usize {
        return Err(data_err(
            "metrics",
            format!("{} voxels are too many to label", gt.len()),
        ));
    }
    let g = gt.mapv(|l| l == LESION);
    // Label 2 is removed from the prediction before anything is measured (module docs).
    let mut p = pred.to_owned();
    ndarray::Zip::from(&mut p)
        .and(&gt)
        .for_each(|p, &l| *p &= l != IGNORE);

    let n_g = g.iter().filter(|&&x| x).count();
    let n_p = p.iter().filter(|&&x| x).count();
    let voxel_mm3 = spacing[0] * spacing[1] * spacing[2];
    let lw = lesion_counts(g.view(), p.view());
    let ratio = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let ppv = ratio(lw.pred_lesions_true, lw.pred_lesions);
    let m = Metrics {
        dsc: dice(p.view(), g.view()),
        tpf: ratio(lw.gt_lesions_detected, lw.gt_lesions),
        ppv,
        fpf: ppv.map(|v| 1.0 - v),
        volume_diff: (n_g > 0).then(|| (n_p as f64 - n_g as f64) / n_g as f64),
        hd95: hd95(p.view(), g.view(), spacing),
        gt_volume_mm3: n_g as f64 * voxel_mm3,
        pred_volume_mm3: n_p as f64 * voxel_mm3,
        gt_lesions: lw.gt_lesions,
        pred_lesions: lw.pred_lesions,
        gt_lesions_detected: lw.gt_lesions_detected,
        pred_lesions_true: lw.pred_lesions_true,
    };
    log::debug!("metrics: {m:?}");
    Ok(m)
}

/// Dice `2|P ∩ G| / (|P| + |G|)` of two masks of the same shape; `1.0` when both are empty.
///
/// # Panics
/// If the shapes differ (a caller's bug: [`evaluate`] checks them).
pub fn dice(p: ArrayView3<bool>, g: ArrayView3<bool>) -> f64 {
    assert_eq!(p.dim(), g.dim(), "dice: masks of different shapes");
    let (mut inter, mut sum) = (0usize, 0usize);
    ndarray::Zip::from(&p).and(&g).for_each(|&a, &b| {
        inter += (a && b) as usize;
        sum += a as usize + b as usize;
    });
    if sum == 0 {
        1.0
    } else {
        2.0 * inter as f64 / sum as f64
    }
}

/// The 6 face neighbours of a voxel as offsets.
const FACES: [[isize; 3]; 6] = [
    [-1, 0, 0],
    [1, 0, 0],
    [0, -1, 0],
    [0, 1, 0],
    [0, 0, -1],
    [0, 0, 1],
];

/// The neighbour of `(i, j, k)` at offset `d`, if it lies inside `dim`.
fn neighbour(
    (i, j, k): (usize, usize, usize),
    d: [isize; 3],
    dim: (usize, usize, usize),
) -> Option<(usize, usize, usize)> {
    let a = i.checked_add_signed(d[0]).filter(|&a| a < dim.0)?;
    let b = j.checked_add_signed(d[1]).filter(|&b| b < dim.1)?;
    let c = k.checked_add_signed(d[2]).filter(|&c| c < dim.2)?;
    Some((a, b, c))
}

/// Connected components of `mask` with face connectivity (6-connectivity), as
/// `scipy.ndimage.label` with its default structure: labels `1..=n` numbered in the order of
/// each component's first voxel in row-major (C) order, `0` for background; returns `(labels, n)`.
///
/// A depth-first flood fill with an explicit stack (no recursion, so a lesion of millions of
/// voxels cannot overflow the call stack).
///
/// # Panics
/// If `mask` has more than `u32::MAX` voxels ([`evaluate`] checks this).
pub fn label_components(mask: ArrayView3<bool>) -> (Array3<u32>, usize) {
    assert!(
        mask.len() <= u32::MAX as usize,
        "label_components: too many voxels"
    );
    let dim = mask.dim();
    let mut labels = Array3::<u32>::zeros(dim);
    let mut n = 0u32;
    let mut stack = Vec::new();
    for (idx, &m) in mask.indexed_iter() {
        if !m || labels[idx] != 0 {
            continue;
        }
        n += 1;
        labels[idx] = n;
        stack.push(idx);
        while let Some(v) = stack.pop() {
            for d in FACES {
                if let Some(w) = neighbour(v, d, dim) {
                    if mask[w] && labels[w] == 0 {
                        labels[w] = n;
                        stack.push(w);
                    }
                }
            }
        }
    }
    (labels, n as usize)
}

/// Lesion-wise counts: components of each mask and how many of them overlap the other mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LesionCounts {
    pub gt_lesions: usize,
    pub gt_lesions_detected: usize,
    pub pred_lesions: usize,
    pub pred_lesions_true: usize,
}

/// Lesion-wise matching of the GT lesion mask `g` and the prediction `p` (label-2 voxels already
/// removed): a GT lesion is detected when any of its voxels is predicted, a predicted lesion is
/// true when any of its voxels is a GT lesion voxel.
///
/// # Panics
/// If the shapes differ.
pub fn lesion_counts(g: ArrayView3<bool>, p: ArrayView3<bool>) -> LesionCounts {
    assert_eq!(p.dim(), g.dim(), "lesion_counts: masks of different shapes");
    let (lg, ng) = label_components(g);
    let (lp, np) = label_components(p);
    let mut hit_g = vec![false; ng + 1];
    let mut hit_p = vec![false; np + 1];
    ndarray::Zip::from(&lg).and(&lp).for_each(|&a, &b| {
        if a != 0 && b != 0 {
            hit_g[a as usize] = true;
            hit_p[b as usize] = true;
        }
    });
    LesionCounts {
        gt_lesions: ng,
        gt_lesions_detected: hit_g.iter().filter(|&&h| h).count(),
        pred_lesions: np,
        pred_lesions_true: hit_p.iter().filter(|&&h| h).count(),
    }
}

/// The boundary of `mask`: its voxels with at least one face neighbour outside the mask, a
/// neighbour beyond the volume's edge counting as outside (medpy's
/// `mask ^ binary_erosion(mask, generate_binary_structure(3, 1))`).
pub fn boundary(mask: ArrayView3<bool>) -> Array3<bool> {
    let dim = mask.dim();
    Array3::from_shape_fn(dim, |v| {
        mask[v]
            && FACES
                .iter()
                .any(|&d| neighbour(v, d, dim).is_none_or(|w| !mask[w]))
    })
}

/// The exact squared Euclidean distance transform: for every voxel, the squared distance in mm²
/// to the nearest `true` voxel of `features` (voxel sizes `spacing`), `+∞` when there is none.
///
/// Felzenszwalb and Huttenlocher's separable algorithm ("Distance Transforms of Sampled
/// Functions", 2012): the squared distance `min_p Σ_d s_d² (x_d - p_d)²` separates into three
/// passes of the 1-D transform `D(q) = min_p s² (q - p)² + f(p)` along the axes, each the lower
/// envelope of parabolas of curvature `s²` rooted at `(p, f(p))`, found in O(n) per line
/// ([`edt_line`]). The result is exactly the brute-force minimum over all features (up to the
/// rounding of the envelope's breakpoints at ties, where both candidates are equal), in
/// O(voxels) time.
pub fn squared_edt(features: ArrayView3<bool>, spacing: [f64; 3]) -> Array3<f64> {
    let mut d = features.mapv(|f| if f { 0.0 } else { f64::INFINITY });
    let longest = d.shape().iter().copied().max().unwrap_or(0);
    let mut scratch = EdtScratch {
        f: Vec::with_capacity(longest),
        v: vec![0; longest],
        z: vec![0.0; longest + 1],
    };
    for (axis, &s) in spacing.iter().enumerate() {
        let w = s * s;
        for lane in d.lanes_mut(Axis(axis)) {
            edt_line(lane, w, &mut scratch);
        }
    }
    d
}

/// Buffers reused across the lines of [`squared_edt`].
struct EdtScratch {
    f: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
}

/// The 1-D transform `D(q) = min_p w (q - p)² + f(p)` of one line, in place.
///
/// Only sites with finite `f(p)` root parabolas (an infinite one never attains the minimum, and
/// would make the intersection formula `∞ - ∞`); a line without any stays `+∞`. Parabolas `p < q`
/// intersect at `s = ((f(q) + w q²) - (f(p) + w p²)) / (2 w (q - p))`; `v[..=k]` are the roots of
/// the envelope and `z[i]..z[i+1]` the interval where `v[i]` is lowest.
fn edt_line(mut line: ArrayViewMut1<f64>, w: f64, s: &mut EdtScratch) {
    s.f.clear();
    s.f.extend(line.iter().copied());
    let f = &s.f;
    let (v, z) = (&mut s.v, &mut s.z);
    let Some(first) = f.iter().position(|x| x.is_finite()) else {
        return;
    };
    let meet = |p: usize, q: usize| {
        let (pf, qf) = (p as f64, q as f64);
        ((f[q] + w * qf * qf) - (f[p] + w * pf * pf)) / (2.0 * w * (qf - pf))
    };
    let mut k = 0;
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for (q, fq) in f.iter().enumerate().skip(first + 1) {
        if !fq.is_finite() {
            continue;
        }
        let mut x = meet(v[k], q);
        // `z[0] = -∞`, so this stops at k = 0 at the latest.
        while x <= z[k] {
            k -= 1;
            x = meet(v[k], q);
        }
        k += 1;
        v[k] = q;
        z[k] = x;
        z[k + 1] = f64::INFINITY;
    }
    let mut k = 0;
    for (q, out) in line.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let d = q.abs_diff(v[k]) as f64;
        *out = w * (d * d) + f[v[k]];
    }
}

/// The distances in mm from every boundary voxel of `from` to the nearest boundary voxel of
/// `to`, in row-major order of the `from` voxels (empty when `from` is empty; `+∞` each when
/// `to` is empty).
pub fn surface_distances(
    from: ArrayView3<bool>,
    to: ArrayView3<bool>,
    spacing: [f64; 3],
) -> Vec<f64> {
    distances_at(boundary(from).view(), boundary(to).view(), spacing)
}

/// The distance in mm from every `true` voxel of `at` to the nearest `true` voxel of `to`.
fn distances_at(at: ArrayView3<bool>, to: ArrayView3<bool>, spacing: [f64; 3]) -> Vec<f64> {
    let d2 = squared_edt(to, spacing);
    at.iter()
        .zip(d2.iter())
        .filter(|(&b, _)| b)
        .map(|(_, &d)| d.sqrt())
        .collect()
}

/// The 95th-percentile symmetric surface distance in mm (module docs): the 95th percentile, with
/// linear interpolation, of the distances from `P`'s boundary to `G`'s and from `G`'s to `P`'s,
/// concatenated. `None` when either mask is empty.
///
/// Works on the bounding box of `P ∪ G`, which changes nothing: every boundary voxel and every
/// feature lies inside it, and a mask voxel on the box's face has its outer neighbour outside
/// the mask, whether that neighbour is cut off (outside the volume) or not.
pub fn hd95(p: ArrayView3<bool>, g: ArrayView3<bool>, spacing: [f64; 3]) -> Option<f64> {
    assert_eq!(p.dim(), g.dim(), "hd95: masks of different shapes");
    if !p.iter().any(|&x| x) || !g.iter().any(|&x| x) {
        return None;
    }
    let (lo, hi) = bounding_box(p, g)?;
    let crop =
        |m: ArrayView3<'_, bool>| boundary(m.slice(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]));
    let (bp, bg) = (crop(p), crop(g));
    let mut d = distances_at(bp.view(), bg.view(), spacing);
    d.extend(distances_at(bg.view(), bp.view(), spacing));
    d.sort_by(f64::total_cmp);
    Some(quantile(&d, 0.95))
}

/// The half-open bounding box `lo..hi` of the voxels set in `a` or `b`; `None` when none is.
fn bounding_box(a: ArrayView3<bool>, b: ArrayView3<bool>) -> Option<([usize; 3], [usize; 3])> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    ndarray::Zip::indexed(&a)
        .and(&b)
        .for_each(|(i, j, k), &x, &y| {
            if x || y {
                for (d, v) in [i, j, k].into_iter().enumerate() {
                    lo[d] = lo[d].min(v);
                    hi[d] = hi[d].max(v + 1);
                }
            }
        });
    (lo[0] != usize::MAX).then_some((lo, hi))
}
