//! A white-matter-lesion cohort derived from real anatomy: the MNI152 template (ICBM 2009a
//! nonlinear symmetric, its T1 image and grey- and white-matter probability maps) reduced to
//! 2 mm, deformed per subject, with simulated lesions and MR contrasts.
//!
//! Per subject (all of it deterministic from the cohort's seed and the subject's index):
//!
//! 1. **Lesions in template space.** A varied number of white-matter lesions (4 to 30,
//!    log-uniform; 15% of subjects get a heavy, partly confluent load of 30 to 50 larger ones;
//!    every subject at least [`MIN_LESION_VOXELS`] labelled voxels), each a union of 1-3
//!    randomly oriented ellipsoids with a rough (noise-perturbed) boundary and a partial-volume
//!    edge, seeded mostly next to the lateral ventricles (periventricular caps and bands), then
//!    in the deep white matter, a few juxtacortical, all supratentorial; volumes log-uniform
//!    from a few voxels to a few thousand mm^3, confined to white matter. One to three "other
//!    pathology" regions (label 2): lacunes (a fluid-filled core with a gliotic rim) in the
//!    deep grey or white matter and cortical infarcts (wedges through cortex into white
//!    matter).
//! 2. **Deformation.** A random affine (rotation up to 6 degrees per axis, scales 0.9-1.1, a
//!    small shift) plus a smooth cubic-B-spline displacement field (control points every
//!    16 mm, a few mm of displacement); every map is resampled through it with trilinear
//!    interpolation, so lesion shapes deform with the anatomy.
//! 3. **Contrasts.** FLAIR from the tissue maps (grey matter brighter than white matter, fluid
//!    suppressed: CSF dark), lesions hyperintense; T1 from the template's own T1 image (white
//!    matter bright, grey matter grey, CSF dark), lesions hypointense. Partial-volume voxels mix
//!    tissue and lesion intensities by the soft lesion label. Per-subject jitter of every
//!    contrast, a fine tissue texture, a multiplicative smooth bias field, a global scale, and
//!    Rician noise (the magnitude of complex Gaussian noise). Outside the brain mask: 0.
//! 4. **Labels.** `wmh`: 1 where the soft lesion label is >= 0.5, 2 where the other-pathology
//!    label is (and no lesion), else 0; `brainmask`: the intracranial mask (grey and white
//!    matter, and the CSF that the T1 template shows dark inside the brain's closed hull).
//!
//! Layout, as the MICCAI 2017 WMH challenge data that the tutorial uses:
//! `DIR/<id>/{FLAIR_brain,T1_brain,wmh,brainmask}.nii.gz` plus `DIR/<id>/preview.png` (axial
//! slices: FLAIR, FLAIR with the lesion outlines, T1) and `DIR/subjects.tsv` (one line per
//! subject: lesion count and volume).

use crate::error::{Error, Result};
use crate::nifti::{self, DataType, Header, Volume};
use crate::random::Generator;
use ndarray::{Array3, Axis, Ix3, Zip};
use std::path::{Path, PathBuf};

/// The reduced template files (in `data/mni152/`).
pub const TEMPLATE_FILES: [&str; 3] = [
    "mni_icbm152_t1_tal_nlin_sym_09a_2mm.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_2mm.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_2mm.nii.gz",
];

/// The original 1 mm files as nilearn ships them (accepted by [`Template::load`] too).
pub const ORIGINAL_FILES: [&str; 3] = [
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
];

/// The least lesion load of a subject, in voxels of the template space (8 mm^3 each).
pub const MIN_LESION_VOXELS: usize = 60;

/// Margin around the brain's bounding box kept by [`Template::reduce`], in mm.
pub const MARGIN_MM: f64 = 10.0;

/// The names of the four images of a subject, as in the WMH challenge data.
pub const FLAIR: &str = "FLAIR_brain.nii.gz";
pub const T1: &str = "T1_brain.nii.gz";
pub const WMH: &str = "wmh.nii.gz";
pub const BRAINMASK: &str = "brainmask.nii.gz";

/// `data/mni152` of this crate's source tree.
pub fn default_template_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("mni152")
}

fn data_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// The template on its 2 mm grid: T1 intensities (0-255), grey- and white-matter
/// probabilities (0-1), and the header holding the grid's geometry.
#[derive(Clone, Debug)]
pub struct Template {
    pub t1: Array3<f32>,
    pub gm: Array3<f32>,
    pub wm: Array3<f32>,
    pub header: Header,
}

fn to3(v: &Volume, path: &Path) -> Result<Array3<f32>> {
    v.data.clone().into_dimensionality::<Ix3>().map_err(|_| {
        data_err(
            path,
            format!("expected a 3-D volume, got shape {:?}", v.shape()),
        )
    })
}

impl Template {
    /// Reads the 2 mm template from `dir` ([`TEMPLATE_FILES`]), or, when those are absent and
    /// the original 1 mm files are there ([`ORIGINAL_FILES`]), reduces those.
    pub fn load(dir: impl AsRef<Path>) -> Result<Template> {
        let dir = dir.as_ref();
        let reduced: Vec<PathBuf> = TEMPLATE_FILES.iter().map(|f| dir.join(f)).collect();
        let original: Vec<PathBuf> = ORIGINAL_FILES.iter().map(|f| dir.join(f)).collect();
        if !reduced.iter().all(|p| p.exists()) && original.iter().all(|p| p.exists()) {
            let v: Vec<Volume> = original.iter().map(nifti::read).collect::<Result<_>>()?;
            return Template::reduce(&v[0], &v[1], &v[2], &original[0]);
        }
        if let Some(p) = reduced.iter().find(|p| !p.exists()) {
            return Err(data_err(
                p,
                format!(
                    "missing: a template directory holds {} (or the 1 mm originals)",
                    TEMPLATE_FILES.join(", ")
                ),
            ));
        }
        let v: Vec<Volume> = reduced.iter().map(nifti::read).collect::<Result<_>>()?;
        let t1 = to3(&v[0], &reduced[0])?;
        let gm = to3(&v[1], &reduced[1])? / 255.0;
        let wm = to3(&v[2], &reduced[2])? / 255.0;
        for (a, p) in [(&gm, &reduced[1]), (&wm, &reduced[2])] {
            if a.shape() != t1.shape() {
                return Err(data_err(
                    p,
                    format!(
                        "shape {:?} differs from the T1's {:?}",
                        a.shape(),
                        t1.shape()
                    ),
                ));
            }
        }
        Ok(Template {
            t1,
            gm,
            wm,
            header: v[0].header.clone(),
        })
    }

    /// The 2 mm template from the 1 mm T1, GM and WM volumes (values 0-255): crops to the
    /// bounding box of the brain (GM + WM > 10%) with a [`MARGIN_MM`] margin, averages 2x2x2
    /// blocks (voxels outside the original field of view count as 0) and rounds to whole
    /// numbers (the stored uint8 values). The affine maps each new voxel to the centre of its
    /// block.
    pub fn reduce(t1: &Volume, gm: &Volume, wm: &Volume, origin: &Path) -> Result<Template> {
        let a = to3(t1, origin)?;
        let g = to3(gm, origin)?;
        let w = to3(wm, origin)?;
        if g.shape() != a.shape() || w.shape() != a.shape() {
            return Err(data_err(
                origin,
                "the T1, GM and WM volumes differ in shape",
            ));
        }
        let sh = a.shape().to_vec();
        let (mut lo, mut hi) = ([i64::MAX; 3], [i64::MIN; 3]);
        for ((idx, &gv), &wv) in g.indexed_iter().zip(w.iter()) {
            if (gv + wv) / 255.0 > 0.1 {
                let idx = [idx.0 as i64, idx.1 as i64, idx.2 as i64];
                for d in 0..3 {
                    lo[d] = lo[d].min(idx[d]);
                    hi[d] = hi[d].max(idx[d]);
                }
            }
        }
        if lo[0] > hi[0] {
            return Err(data_err(origin, "no brain in the GM and WM maps"));
        }
        let pix = t1.header.pixdim();
        let mut start = [0i64; 3];
        let mut n = [0usize; 3];
        for d in 0..3 {
            let m = (MARGIN_MM / pix[d].abs().max(1e-6)).ceil() as i64;
            start[d] = lo[d] - m;
            n[d] = ((hi[d] + m - start[d] + 1) as usize).div_ceil(2);
        }
        let block = |src: &Array3<f32>| -> Array3<f32> {
            Array3::from_shape_fn((n[0], n[1], n[2]), |(i, j, k)| {
                let mut s = 0.0f32;
                for di in 0..2 {
                    for dj in 0..2 {
                        for dk in 0..2 {
                            let x = start[0] + 2 * i as i64 + di;
                            let y = start[1] + 2 * j as i64 + dj;
                            let z = start[2] + 2 * k as i64 + dk;
                            if x >= 0
                                && y >= 0
                                && z >= 0
                                && (x as usize) < sh[0]
                                && (y as usize) < sh[1]
                                && (z as usize) < sh[2]
                            {
                                s += src[[x as usize, y as usize, z as usize]];
                            }
                        }
                    }
                }
                (s / 8.0).round()
            })
        };
        let a0 = t1.header.affine();
        let mut aff = [[0.0f64; 4]; 4];
        for r in 0..4 {
            for c in 0..3 {
                aff[r][c] = 2.0 * a0[r][c];
            }
            aff[r][3] = a0[r][3]
                + (0..3)
                    .map(|c| a0[r][c] * (start[c] as f64 + 0.5))
                    .sum::<f64>();
        }
        let mut header = t1.header.clone();
        let code = if header.sform_code > 0 {
            header.sform_code
        } else {
            header.qform_code.max(nifti::XFORM_SCANNER_ANAT)
        };
        header.set_affine(aff, code);
        header.dim = [3, n[0] as i64, n[1] as i64, n[2] as i64, 1, 1, 1, 1];
        header.scl_slope = 1.0;
        header.scl_inter = 0.0;
        header.cal_min = 0.0;
        header.cal_max = 0.0;
        header.xyzt_units = nifti::UNITS_MM;
        header.descrip = "MNI152 2009a sym, 2 mm (kiln)".into();
        Ok(Template {
            t1: block(&a),
            gm: block(&g) / 255.0,
            wm: block(&w) / 255.0,
            header,
        })
    }

    /// Writes the three maps as uint8 (0-255) NIfTI files named [`TEMPLATE_FILES`] into `dir`.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| data_err(dir, format!("cannot create: {e}")))?;
        for (name, (arr, scale)) in
            TEMPLATE_FILES
                .iter()
                .zip([(&self.t1, 1.0f32), (&self.gm, 255.0), (&self.wm, 255.0)])
        {
            let data = arr.mapv(|v| (v * scale).round()).into_dyn();
            let vol = Volume {
                header: self.header.clone(),
                data,
            };
            nifti::write(dir.join(name), &vol, DataType::U8)?;
        }
        Ok(())
    }

    pub fn shape(&self) -> [usize; 3] {
        let s = self.t1.shape();
        [s[0], s[1], s[2]]
    }
}

// ---------------------------------------------------------------------------------------------
// Volume helpers: Gaussian smoothing, Euclidean distance transform, hole filling, B-spline
// fields, trilinear sampling.

/// Separable Gaussian smoothing with `sigma` voxels (truncated at 3 sigma, edges clamped).
fn smooth(a: &Array3<f32>, sigma: f32) -> Array3<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / ks).collect();
    let mut out = a.clone();
    let mut buf = Vec::new();
    for ax in 0..3 {
        for mut lane in out.lanes_mut(Axis(ax)) {
            buf.clear();
            buf.extend(lane.iter().copied());
            let n = buf.len() as isize;
            for (i, o) in lane.iter_mut().enumerate() {
                let mut s = 0.0;
                for (t, &w) in k.iter().enumerate() {
                    let j = (i as isize + t as isize - r).clamp(0, n - 1);
                    s += w * buf[j as usize];
                }
                *o = s;
            }
        }
    }
    out
}

/// Squared Euclidean distance (in voxels) from each voxel to the nearest voxel where `fg` is
/// true (Felzenszwalb and Huttenlocher's separable transform); huge where there is none.
fn edt_sq(fg: &Array3<bool>) -> Array3<f32> {
    const INF: f64 = 1e20;
    let mut d: Array3<f64> = fg.mapv(|b| if b { 0.0 } else { INF });
    let mut f = Vec::new();
    let mut out = Vec::new();
    let mut v = Vec::new();
    let mut z = Vec::new();
    for ax in 0..3 {
        for mut lane in d.lanes_mut(Axis(ax)) {
            f.clear();
            f.extend(lane.iter().copied());
            let n = f.len();
            out.resize(n, 0.0);
            v.resize(n, 0usize);
            z.resize(n + 1, 0.0f64);
            let mut k = 0usize;
            v[0] = 0;
            z[0] = -INF;
            z[1] = INF;
            for q in 1..n {
                let qf = q as f64;
                loop {
                    let p = v[k] as f64;
                    let s = ((f[q] + qf * qf) - (f[v[k]] + p * p)) / (2.0 * qf - 2.0 * p);
                    if s <= z[k] && k > 0 {
                        k -= 1;
                        continue;
                    }
                    if s <= z[k] {
                        // k == 0: replace the first parabola.
                        v[0] = q;
                        z[0] = -INF;
                        z[1] = INF;
                    } else {
                        k += 1;
                        v[k] = q;
                        z[k] = s;
                        z[k + 1] = INF;
                    }
                    break;
                }
            }
            k = 0;
            for (q, o) in out.iter_mut().enumerate() {
                while z[k + 1] < q as f64 {
                    k += 1;
                }
                let dq = q as f64 - v[k] as f64;
                *o = dq * dq + f[v[k]];
            }
            for (l, &o) in lane.iter_mut().zip(out.iter()) {
                *l = o.min(INF);
            }
        }
    }
    d.mapv(|x| x as f32)
}

/// `mask` with the background regions that do not touch the volume's border filled
/// (6-connectivity).
fn fill_holes(mask: &Array3<bool>) -> Array3<bool> {
    let sh = mask.shape();
    let (nx, ny, nz) = (sh[0], sh[1], sh[2]);
    let mut outside = Array3::from_elem((nx, ny, nz), false);
    let mut stack = Vec::new();
    for ((i, j, k), &m) in mask.indexed_iter() {
        let border = i == 0 || j == 0 || k == 0 || i == nx - 1 || j == ny - 1 || k == nz - 1;
        if border && !m {
            outside[[i, j, k]] = true;
            stack.push((i, j, k));
        }
    }
    while let Some((i, j, k)) = stack.pop() {
        let mut visit = |x: usize, y: usize, z: usize| {
            if !mask[[x, y, z]] && !outside[[x, y, z]] {
                outside[[x, y, z]] = true;
                stack.push((x, y, z));
            }
        };
        if i > 0 {
            visit(i - 1, j, k)
        }
        if i + 1 < nx {
            visit(i + 1, j, k)
        }
        if j > 0 {
            visit(i, j - 1, k)
        }
        if j + 1 < ny {
            visit(i, j + 1, k)
        }
        if k > 0 {
            visit(i, j, k - 1)
        }
        if k + 1 < nz {
            visit(i, j, k + 1)
        }
    }
    outside.mapv(|o| !o)
}

/// Cubic B-spline weights of the four control points around fractional position `u` in [0, 1).
fn bspline_weights(u: f32) -> [f32; 4] {
    let u2 = u * u;
    let u3 = u2 * u;
    [
        (1.0 - u).powi(3) / 6.0,
        (3.0 * u3 - 6.0 * u2 + 4.0) / 6.0,
        (-3.0 * u3 + 3.0 * u2 + 3.0 * u + 1.0) / 6.0,
        u3 / 6.0,
    ]
}

/// A smooth random field of `shape`: standard-normal coefficients on a control grid every
/// `spacing` voxels, interpolated by cubic B-splines (separably, axis by axis), times `amp`.
fn bspline_field(g: &mut Generator, shape: [usize; 3], spacing: f32, amp: f32) -> Array3<f32> {
    let nc: Vec<usize> = shape
        .iter()
        .map(|&n| (n as f32 / spacing).ceil() as usize + 3)
        .collect();
    let mut cur = Array3::from_shape_fn((nc[0], nc[1], nc[2]), |_| g.normal() as f32 * amp);
    for ax in 0..3 {
        let mut sh = [cur.shape()[0], cur.shape()[1], cur.shape()[2]];
        sh[ax] = shape[ax];
        let mut next = Array3::<f32>::zeros(sh);
        let n_ctrl = cur.shape()[ax];
        for (src, mut dst) in cur
            .lanes(Axis(ax))
            .into_iter()
            .zip(next.lanes_mut(Axis(ax)))
        {
            for (i, o) in dst.iter_mut().enumerate() {
                // Control point c sits at voxel (c - 1) * spacing.
                let t = i as f32 / spacing + 1.0;
                let b = t.floor();
                let w = bspline_weights(t - b);
                let mut s = 0.0;
                for (q, &wq) in w.iter().enumerate() {
                    let c = (b as isize - 1 + q as isize).clamp(0, n_ctrl as isize - 1) as usize;
                    s += wq * src[c];
                }
                *o = s;
            }
        }
        cur = next;
    }
    cur
}

/// Trilinear interpolation weights at `p` (voxel coordinates): the corner (i, j, k) and the
/// fractions, or None outside the grid.
#[inline]
fn corner(p: [f32; 3], shape: [usize; 3]) -> Option<([usize; 3], [f32; 3])> {
    let mut c = [0usize; 3];
    let mut f = [0f32; 3];
    for d in 0..3 {
        if !(p[d] >= 0.0 && p[d] <= (shape[d] - 1) as f32) {
            return None;
        }
        let fl = p[d].floor().min((shape[d] - 2) as f32);
        c[d] = fl as usize;
        f[d] = p[d] - fl;
    }
    Some((c, f))
}

#[inline]
fn trilinear(a: &Array3<f32>, c: [usize; 3], f: [f32; 3]) -> f32 {
    let [i, j, k] = c;
    let [fx, fy, fz] = f;
    let v = |x, y, z| a[[i + x, j + y, k + z]];
    let c00 = v(0, 0, 0) * (1.0 - fx) + v(1, 0, 0) * fx;
    let c10 = v(0, 1, 0) * (1.0 - fx) + v(1, 1, 0) * fx;
    let c01 = v(0, 0, 1) * (1.0 - fx) + v(1, 0, 1) * fx;
    let c11 = v(0, 1, 1) * (1.0 - fx) + v(1, 1, 1) * fx;
    let c0 = c00 * (1.0 - fy) + c10 * fy;
    let c1 = c01 * (1.0 - fy) + c11 * fy;
    c0 * (1.0 - fz) + c1 * fz
}

// ---------------------------------------------------------------------------------------------
// Template-space anatomy, computed once per cohort.

/// The template's anatomy on its grid, with the derived maps the synthesis needs.
pub struct Anatomy {
    pub template: Template,
    /// CSF fraction inside the intracranial mask (1 - GM - WM, where the T1 is dark).
    pub csf: Array3<f32>,
    /// The intracranial mask as 0/1 (GM, WM and the CSF inside the brain's closed hull).
    pub icm: Array3<f32>,
    /// Lateral ventricles: CSF deep inside the brain.
    pub ventricles: Array3<bool>,
    /// Distance (voxels) to the ventricles.
    pub dist_vent: Array3<f32>,
    /// Distance (voxels) to the outside of the intracranial mask.
    pub depth: Array3<f32>,
    /// Seed candidates (voxel indices): periventricular WM, deep WM, juxtacortical WM, deep GM.
    pub periventricular: Vec<[usize; 3]>,
    pub deep_wm: Vec<[usize; 3]>,
    pub juxtacortical: Vec<[usize; 3]>,
    pub deep_gm: Vec<[usize; 3]>,
    pub cortex: Vec<[usize; 3]>,
}

impl Anatomy {
    pub fn new(template: Template) -> Anatomy {
        let tissue = Zip::from(&template.gm)
            .and(&template.wm)
            .map_collect(|&g, &w| (g + w).min(1.0));
        // The brain's closed hull: tissue, closed with a 7-voxel (14 mm) ball, holes filled.
        let t = smooth(&tissue, 0.7).mapv(|v| v > 0.3);
        let r = 7.0f32;
        let dil = edt_sq(&t).mapv(|d| d <= r * r);
        let closed = edt_sq(&dil.mapv(|b| !b)).mapv(|d| d > r * r);
        let hull = fill_holes(&Zip::from(&closed).and(&t).map_collect(|&c, &t| c || t));
        // CSF: what is not tissue inside the hull, where the T1 is dark (fluid; not dura, fat
        // or vessels, which the template shows bright).
        let csf = Zip::from(&tissue)
            .and(&template.t1)
            .and(&hull)
            .map_collect(|&ti, &t1, &h| {
                if !h {
                    return 0.0;
                }
                let dark = ((175.0 - t1) / 60.0).clamp(0.0, 1.0);
                // Mostly-tissue voxels keep their remainder as CSF (partial volume).
                let rest = 1.0 - ti;
                if ti > 0.5 {
                    rest
                } else {
                    rest * dark
                }
            });
        let icm = Zip::from(&tissue)
            .and(&csf)
            .and(&hull)
            .map_collect(|&ti, &c, &h| if h && ti + c > 0.5 { 1.0f32 } else { 0.0 });
        // Keep one component: fill holes of the mask again (dark non-CSF inside stays in).
        let icm_b = fill_holes(&icm.mapv(|v| v > 0.5));
        let icm = icm_b.mapv(|b| b as u8 as f32);
        let depth = edt_sq(&icm_b.mapv(|b| !b)).mapv(f32::sqrt);
        let sh = template.shape();
        let centre = [sh[0] as f32 / 2.0, sh[1] as f32 * 0.55, sh[2] as f32 * 0.6];
        let ventricles = Zip::indexed(&csf)
            .and(&depth)
            .map_collect(|(i, j, k), &c, &d| {
                // Deep fluid near the centre: the lateral and third ventricles.
                let dx = (i as f32 - centre[0]) / (sh[0] as f32 * 0.2);
                let dy = (j as f32 - centre[1]) / (sh[1] as f32 * 0.3);
                let dz = (k as f32 - centre[2]) / (sh[2] as f32 * 0.25);
                c > 0.5 && d > 8.0 && dx * dx + dy * dy + dz * dz < 1.0
            });
        let dist_vent = edt_sq(&ventricles).mapv(f32::sqrt);
        let (mut pv, mut deep, mut juxta, mut dgm, mut ctx) =
            (vec![], vec![], vec![], vec![], vec![]);
        // World (MNI) z of a voxel: white-matter lesions are supratentorial, seeded above the
        // level of the lateral ventricles' floor; deep grey matter (lacunes) from the basal
        // ganglia up.
        let aff = template.header.affine();
        let zmm = |i: usize, j: usize, k: usize| {
            aff[2][0] * i as f64 + aff[2][1] * j as f64 + aff[2][2] * k as f64 + aff[2][3]
        };
        for ((i, j, k), &w) in template.wm.indexed_iter() {
            let z = zmm(i, j, k);
            let g = template.gm[[i, j, k]];
            let dv = dist_vent[[i, j, k]];
            let dp = depth[[i, j, k]];
            let idx = [i, j, k];
            if z > 0.0 && w > 0.6 && (1.0..=3.5).contains(&dv) {
                pv.push(idx);
            } else if z > -5.0 && w > 0.85 && dv > 3.5 && dp > 6.0 {
                deep.push(idx);
            } else if z > -5.0 && w > 0.6 && dp > 2.5 && dp <= 6.0 {
                juxta.push(idx);
            }
            if z > -10.0 && g > 0.5 && w > 0.2 && dp > 12.0 && dv > 2.0 {
                dgm.push(idx);
            }
            if z > -20.0 && g > 0.6 && dp > 1.0 && dp < 4.0 {
                ctx.push(idx);
            }
        }
        Anatomy {
            template,
            csf,
            icm,
            ventricles,
            dist_vent,
            depth,
            periventricular: pv,
            deep_wm: deep,
            juxtacortical: juxta,
            deep_gm: dgm,
            cortex: ctx,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random helpers.

fn uniform(g: &mut Generator, a: f64, b: f64) -> f64 {
    a + (b - a) * g.uniform_f64()
}

fn log_uniform(g: &mut Generator, a: f64, b: f64) -> f64 {
    uniform(g, a.ln(), b.ln()).exp()
}

fn pick(g: &mut Generator, v: &[[usize; 3]]) -> Option<[usize; 3]> {
    if v.is_empty() {
        None
    } else {
        Some(v[g.below(v.len() as u64) as usize])
    }
}

/// A uniformly random rotation (from a random unit quaternion), as a 3x3 matrix.
fn random_rotation(g: &mut Generator) -> [[f32; 3]; 3] {
    let mut q = [0f64; 4];
    loop {
        for x in q.iter_mut() {
            *x = g.normal();
        }
        let n = q.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-6 {
            for x in q.iter_mut() {
                *x /= n;
            }
            break;
        }
    }
    let [a, b, c, d] = q;
    [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ]
    .map(|r| r.map(|x| x as f32))
}

/// The seed of subject `index` in a cohort seeded `seed` (splitmix64 mixing).
pub fn subject_seed(seed: u64, index: usize) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    mix(seed ^ mix(index as u64 ^ 0x5EED_0000))
}

// ---------------------------------------------------------------------------------------------
// Blobs: lesions and other pathology as unions of rough ellipsoids with soft edges.

struct Ellipsoid {
    centre: [f32; 3],
    /// Rows: the ellipsoid's axes in voxel space.
    rot: [[f32; 3]; 3],
    radii: [f32; 3],
}

/// Adds to `soft` (max) a blob of about `volume_vox` voxels at `seed`: 1-3 ellipsoids, its
/// boundary perturbed by `rough` (a smooth unit-variance noise field) times `roughness`, a
/// partial-volume edge one voxel wide, confined by `allow` (0-1); where `strength` is given,
/// the blob's intensity factor is recorded where it is the strongest label. Returns the sum of
/// the blob's soft label (its volume in voxels).
#[allow(clippy::too_many_arguments)]
fn add_blob(
    g: &mut Generator,
    soft: &mut Array3<f32>,
    strength: Option<(&mut Array3<f32>, f32)>,
    seed: [usize; 3],
    volume_vox: f64,
    elongation: f64,
    parts: usize,
    rough: &Array3<f32>,
    roughness: f32,
    allow: &dyn Fn(usize, usize, usize) -> f32,
) -> f32 {
    let sh = [soft.shape()[0], soft.shape()[1], soft.shape()[2]];
    let r0 = (3.0 * volume_vox / (4.0 * std::f64::consts::PI)).cbrt();
    let mut parts_v = Vec::new();
    for p in 0..parts {
        let scale = if p == 0 { 1.0 } else { uniform(g, 0.45, 0.8) };
        let mut radii = [0f64; 3];
        for r in radii.iter_mut() {
            *r = (g.normal() * 0.25).exp();
        }
        radii[0] *= elongation;
        let gm = (radii[0] * radii[1] * radii[2]).cbrt();
        let radii = radii.map(|r| (r / gm * r0 * scale).max(0.55) as f32);
        let rot = random_rotation(g);
        let centre = if p == 0 {
            seed.map(|v| v as f32)
        } else {
            let dir = random_rotation(g)[0];
            let dist = (r0 * uniform(g, 0.5, 1.1)) as f32;
            [0, 1, 2].map(|d| seed[d] as f32 + dir[d] * dist)
        };
        parts_v.push(Ellipsoid { centre, rot, radii });
    }
    let reach = parts_v
        .iter()
        .map(|e| {
            let rmax = e.radii.iter().cloned().fold(0.0f32, f32::max);
            let c = e.centre;
            (c, rmax * (1.0 + roughness) + 2.0)
        })
        .collect::<Vec<_>>();
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (c, r) in &reach {
        for d in 0..3 {
            lo[d] = lo[d].min((c[d] - r).floor().max(0.0) as usize);
            hi[d] = hi[d].max(((c[d] + r).ceil() as usize).min(sh[d] - 1));
        }
    }
    let mut total = 0.0;
    let mut strength = strength;
    for i in lo[0]..=hi[0] {
        for j in lo[1]..=hi[1] {
            for k in lo[2]..=hi[2] {
                // Signed distance (voxels, approximate) to the union's surface.
                let mut dmin = f32::INFINITY;
                for e in &parts_v {
                    let v = [
                        i as f32 - e.centre[0],
                        j as f32 - e.centre[1],
                        k as f32 - e.centre[2],
                    ];
                    let mut q = 0.0;
                    for a in 0..3 {
                        let t = (e.rot[a][0] * v[0] + e.rot[a][1] * v[1] + e.rot[a][2] * v[2])
                            / e.radii[a];
                        q += t * t;
                    }
                    let rmin = e.radii.iter().cloned().fold(f32::INFINITY, f32::min);
                    let rmean = (e.radii[0] + e.radii[1] + e.radii[2]) / 3.0;
                    let rr = rmin.max(0.5 * rmean);
                    dmin = dmin.min((q.sqrt() - 1.0) * rr);
                }
                let rmean0 = (parts_v[0].radii.iter().sum::<f32>() / 3.0).max(1.0);
                let d = dmin - roughness * rmean0 * rough[[i, j, k]];
                let s = (0.5 - d).clamp(0.0, 1.0) * allow(i, j, k);
                if s > 0.0 {
                    total += s;
                    let cell = &mut soft[[i, j, k]];
                    if s > *cell {
                        if let Some((st, v)) = strength.as_mut() {
                            st[[i, j, k]] = *v;
                        }
                        *cell = s;
                    }
                }
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// One subject.

/// The four images of a subject and what was simulated.
pub struct Subject {
    pub flair: Volume,
    pub t1: Volume,
    /// 0 background, 1 white-matter lesion, 2 other pathology.
    pub wmh: Volume,
    pub brainmask: Volume,
    /// The subject's white-matter probability (the template's, deformed), for checks.
    pub wm: Array3<f32>,
    /// Lesions placed (some may end up too small to reach the 0.5 threshold).
    pub lesions: usize,
    pub other_regions: usize,
}

/// Synthesises subject `index` of the cohort seeded `seed`.
pub fn synthesize(anat: &Anatomy, seed: u64, index: usize) -> Result<Subject> {
    let mut g = Generator::new(subject_seed(seed, index));
    let tpl = &anat.template;
    let sh = tpl.shape();
    let (nx, ny, nz) = (sh[0], sh[1], sh[2]);

    // 1. Lesions and other pathology in template space.
    let rough = {
        let noise = Array3::from_shape_fn((nx, ny, nz), |_| g.normal() as f32);
        let s = smooth(&noise, 1.5);
        let sd = (s.iter().map(|v| v * v).sum::<f32>() / s.len() as f32)
            .sqrt()
            .max(1e-6);
        s / sd
    };
    let mut les = Array3::<f32>::zeros((nx, ny, nz));
    let mut les_k = Array3::<f32>::from_elem((nx, ny, nz), 1.0);
    let heavy = g.uniform_f64() < 0.15;
    let n_planned = if heavy {
        uniform(&mut g, 30.0, 50.0).round() as usize // heavy, partly confluent lesion load
    } else {
        log_uniform(&mut g, 4.0, 30.0).round() as usize
    };
    let size_factor = if heavy { 2.0 } else { 1.0 };
    let wm = &tpl.wm;
    let allow_wm = |i: usize, j: usize, k: usize| ((wm[[i, j, k]] - 0.25) / 0.4).clamp(0.0, 1.0);
    // Lesions until the planned count is placed and at least MIN_LESION_VOXELS are labelled
    // (small lesions can vanish under the partial-volume threshold), at most 20 more.
    let mut n_les = 0;
    let mut labelled = 0usize;
    while n_les < n_planned || (labelled < MIN_LESION_VOXELS && n_les < n_planned + 20) {
        let z = if n_les >= n_planned {
            0.0
        } else {
            g.uniform_f64()
        };
        let (cands, vmin, vmax, elong, parts) = if z < 0.55 {
            (
                &anat.periventricular,
                20.0,
                4000.0 * size_factor,
                uniform(&mut g, 1.0, 2.2),
                1 + g.below(3) as usize,
            )
        } else if z < 0.9 {
            (
                &anat.deep_wm,
                10.0,
                900.0 * size_factor,
                uniform(&mut g, 0.9, 1.6),
                1 + g.below(2) as usize,
            )
        } else {
            (
                &anat.juxtacortical,
                10.0,
                300.0,
                uniform(&mut g, 1.0, 1.8),
                1,
            )
        };
        n_les += 1;
        let Some(seed_vox) = pick(&mut g, cands) else {
            continue;
        };
        let vol_mm3 = log_uniform(&mut g, vmin, vmax);
        let vox = vol_mm3 / 8.0;
        let k = uniform(&mut g, 0.85, 1.15) as f32;
        let rough_amt = uniform(&mut g, 0.1, 0.35) as f32;
        add_blob(
            &mut g,
            &mut les,
            Some((&mut les_k, k)),
            seed_vox,
            vox,
            elong,
            parts,
            &rough,
            rough_amt,
            &allow_wm,
        );
        if n_les >= n_planned {
            labelled = les.iter().filter(|&&v| v >= 0.5).count();
        }
    }
    // Other pathology: lacunes (fluid core, gliotic rim) and cortical infarcts.
    let mut oth = Array3::<f32>::zeros((nx, ny, nz));
    let mut core = Array3::<f32>::zeros((nx, ny, nz));
    let n_oth = 1 + g.below(3) as usize;
    let tissue_ok = |i: usize, j: usize, k: usize| {
        ((tpl.gm[[i, j, k]] + tpl.wm[[i, j, k]] - 0.3) / 0.4).clamp(0.0, 1.0)
    };
    for _ in 0..n_oth {
        if g.uniform_f64() < 0.6 {
            let Some(s) = pick(&mut g, &anat.deep_gm).or_else(|| pick(&mut g, &anat.deep_wm))
            else {
                continue;
            };
            let vol = log_uniform(&mut g, 40.0, 250.0) / 8.0;
            add_blob(
                &mut g,
                &mut oth,
                None,
                s,
                vol * 2.2,
                1.2,
                1,
                &rough,
                0.1,
                &tissue_ok,
            );
            add_blob(
                &mut g,
                &mut core,
                None,
                s,
                vol * 0.6,
                1.2,
                1,
                &rough,
                0.1,
                &tissue_ok,
            );
        } else {
            let Some(s) = pick(&mut g, &anat.cortex) else {
                continue;
            };
            let vol = log_uniform(&mut g, 400.0, 4000.0) / 8.0;
            add_blob(
                &mut g, &mut oth, None, s, vol, 1.5, 2, &rough, 0.3, &tissue_ok,
            );
            if g.uniform_f64() < 0.5 {
                add_blob(
                    &mut g,
                    &mut core,
                    None,
                    s,
                    vol * 0.25,
                    1.3,
                    1,
                    &rough,
                    0.3,
                    &tissue_ok,
                );
            }
        }
    }

    // 2. Deformation (pull-back: output voxel x samples the template at p(x)).
    let deg = std::f64::consts::PI / 180.0;
    let angles = [0; 3].map(|_| uniform(&mut g, -6.0, 6.0) * deg);
    let global = uniform(&mut g, 0.92, 1.08);
    let scales = [0; 3].map(|_| global * uniform(&mut g, 0.97, 1.03));
    let shift = [0; 3].map(|_| uniform(&mut g, -1.5, 1.5));
    let rot = {
        let (sa, ca) = angles[0].sin_cos();
        let (sb, cb) = angles[1].sin_cos();
        let (sc, cc) = angles[2].sin_cos();
        let rx = [[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]];
        let ry = [[cb, 0.0, sb], [0.0, 1.0, 0.0], [-sb, 0.0, cb]];
        let rz = [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]];
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut m = [[0.0; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
                }
            }
            m
        };
        mul(mul(rz, ry), rx)
    };
    // Sampling the template at M (x - c) + c + shift: scales > 1 shrink the subject's brain.
    let mut m = [[0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (rot[i][j] / scales[j]) as f32;
        }
    }
    let c = [nx as f32 / 2.0, ny as f32 / 2.0, nz as f32 / 2.0];
    let disp_amp = uniform(&mut g, 0.6, 1.4) as f32; // voxels (x 2 mm)
    let ux = bspline_field(&mut g, sh, 8.0, disp_amp);
    let uy = bspline_field(&mut g, sh, 8.0, disp_amp);
    let uz = bspline_field(&mut g, sh, 8.0, disp_amp);

    // Maps to resample, in order.
    let t1n = tpl.t1.mapv(|v| v / 223.0);
    let sources: [&Array3<f32>; 10] = [
        &tpl.gm, &tpl.wm, &anat.csf, &anat.icm, &t1n, &les, &les_k, &oth, &core, &rough,
    ];
    let mut out: Vec<Array3<f32>> = (0..sources.len())
        .map(|_| Array3::zeros((nx, ny, nz)))
        .collect();
    for i in 0..nx {
        for j in 0..ny {
            for k in 0..nz {
                let v = [i as f32 - c[0], j as f32 - c[1], k as f32 - c[2]];
                let mut p = [0f32; 3];
                for d in 0..3 {
                    p[d] =
                        c[d] + m[d][0] * v[0] + m[d][1] * v[1] + m[d][2] * v[2] + shift[d] as f32;
                }
                p[0] += ux[[i, j, k]];
                p[1] += uy[[i, j, k]];
                p[2] += uz[[i, j, k]];
                if let Some((cc, ff)) = corner(p, sh) {
                    for (o, s) in out.iter_mut().zip(sources.iter()) {
                        o[[i, j, k]] = trilinear(s, cc, ff);
                    }
                }
            }
        }
    }
    let [gm_s, wm_s, csf_s, icm_s, t1_s, les_s, lesk_s, oth_s, core_s, rough_s]: [Array3<f32>; 10] =
        out.try_into()
            .map_err(|_| Error::DType("internal".into()))?;
    let mask = icm_s.mapv(|v| v >= 0.5);

    // 3. Contrasts.
    let fw = uniform(&mut g, 0.72, 0.84) as f32; // FLAIR WM (GM = 1)
    let fc = uniform(&mut g, 0.08, 0.2) as f32; // FLAIR CSF
    let fl = uniform(&mut g, 1.3, 1.65) as f32; // FLAIR lesion
    let fo = uniform(&mut g, 1.25, 1.6) as f32; // FLAIR gliosis (label 2)
    let tgam = uniform(&mut g, 0.85, 1.15) as f32; // T1 contrast
    let tl = uniform(&mut g, 0.55, 0.72) as f32; // T1 lesion (WM = 1; GM is about 0.75)
    let tex_f = uniform(&mut g, 0.01, 0.03) as f32;
    let (amp_f, amp_t) = (
        uniform(&mut g, 0.05, 0.15) as f32,
        uniform(&mut g, 0.05, 0.15) as f32,
    );
    let bias_f = bspline_field(&mut g, sh, 24.0, amp_f);
    let bias_t = bspline_field(&mut g, sh, 24.0, amp_t);
    let scale_f = (400.0 * (g.normal() * 0.25).exp()) as f32;
    let scale_t = (500.0 * (g.normal() * 0.25).exp()) as f32;
    let noise_f = uniform(&mut g, 0.01, 0.03) as f32;
    let noise_t = uniform(&mut g, 0.008, 0.025) as f32;

    let mut flair = Array3::<f32>::zeros((nx, ny, nz));
    let mut t1 = Array3::<f32>::zeros((nx, ny, nz));
    let mut lab = Array3::<f32>::zeros((nx, ny, nz));
    for i in 0..nx {
        for j in 0..ny {
            for k in 0..nz {
                let idx = [i, j, k];
                if !mask[idx] {
                    continue;
                }
                let (mut gg, mut ww) = (gm_s[idx], wm_s[idx]);
                let tt = gg + ww;
                if tt > 1.0 {
                    gg /= tt;
                    ww /= tt;
                }
                let cc = (1.0 - gg - ww).max(0.0).min(csf_s[idx].max(1.0 - gg - ww));
                let l = les_s[idx].clamp(0.0, 1.0);
                let o = (oth_s[idx] * (1.0 - l)).clamp(0.0, 1.0);
                let co = (core_s[idx] * (1.0 - l)).clamp(0.0, 1.0);
                let tex = 1.0 + tex_f * rough_s[idx];
                let mut f = (gg + ww * fw + cc * fc) * tex;
                f = f * (1.0 - l) + l * fl * lesk_s[idx] * tex;
                f = f * (1.0 - o) + o * fo * tex;
                f = f * (1.0 - co) + co * fc;
                let mut t = t1_s[idx].max(0.0).powf(tgam) * (1.0 + 0.5 * tex_f * rough_s[idx]);
                t = t * (1.0 - l) + l * tl * (2.0 - lesk_s[idx]);
                t = t * (1.0 - o) + o * 0.6;
                t = t * (1.0 - co) + co * 0.3;
                flair[idx] = f * bias_f[idx].exp() * scale_f;
                t1[idx] = t * bias_t[idx].exp() * scale_t;
                lab[idx] = if l >= 0.5 {
                    1.0
                } else if oth_s[idx] >= 0.5 {
                    2.0
                } else {
                    0.0
                };
            }
        }
    }
    // Rician noise: |signal + complex Gaussian|, inside the mask (the images are brain-masked).
    for (img, lvl, scale) in [(&mut flair, noise_f, scale_f), (&mut t1, noise_t, scale_t)] {
        let sigma = lvl * scale;
        for (v, &m) in img.iter_mut().zip(mask.iter()) {
            if m {
                let a = *v + sigma * g.normal() as f32;
                let b = sigma * g.normal() as f32;
                *v = (a * a + b * b).sqrt();
            }
        }
    }

    let mut header = tpl.header.clone();
    header.descrip = format!("kiln lesions synth seed {seed} subject {index}");
    let mk = |a: Array3<f32>| Volume {
        header: header.clone(),
        data: a.into_dyn(),
    };
    Ok(Subject {
        flair: mk(flair),
        t1: mk(t1),
        wmh: mk(lab),
        brainmask: mk(mask.mapv(|b| b as u8 as f32)),
        wm: wm_s,
        lesions: n_les,
        other_regions: n_oth,
    })
}

// ---------------------------------------------------------------------------------------------
// Cohort.

/// Options of [`synthesize_cohort`].
#[derive(Clone, Debug)]
pub struct CohortOptions {
    pub subjects: usize,
    pub seed: u64,
    /// Write `preview.png` per subject.
    pub preview: bool,
    /// Worker threads (0: all cores).
    pub threads: usize,
}

/// The id of subject `index` (`sub-000`, ...).
pub fn subject_id(index: usize) -> String {
    format!("sub-{index:03}")
}

/// What [`synthesize_cohort`] made, per subject.
#[derive(Clone, Debug)]
pub struct SubjectSummary {
    pub id: String,
    pub lesions: usize,
    pub lesion_voxels: usize,
    pub lesion_ml: f64,
    pub other_voxels: usize,
}

/// Writes a cohort into `out` (see the module docs). Subjects are made in parallel; each
/// depends only on the seed and its index, so the files do not depend on the thread count.
pub fn synthesize_cohort(
    anat: &Anatomy,
    out: &Path,
    opts: &CohortOptions,
) -> Result<Vec<SubjectSummary>> {
    std::fs::create_dir_all(out).map_err(|e| data_err(out, format!("cannot create: {e}")))?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    }
    .clamp(1, opts.subjects.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<SubjectSummary>>>> =
        std::sync::Mutex::new((0..opts.subjects).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= opts.subjects {
                    break;
                }
                let r = make_one(anat, out, opts, i);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let summaries: Vec<SubjectSummary> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every subject ran"))
        .collect::<Result<_>>()?;
    let tsv = out.join("subjects.tsv");
    let mut text = String::from("id\tlesions_placed\tlesion_voxels\tlesion_ml\tother_voxels\n");
    for s in &summaries {
        text += &format!(
            "{}\t{}\t{}\t{:.3}\t{}\n",
            s.id, s.lesions, s.lesion_voxels, s.lesion_ml, s.other_voxels
        );
    }
    std::fs::write(&tsv, text).map_err(|e| data_err(&tsv, format!("cannot write: {e}")))?;
    Ok(summaries)
}

fn make_one(anat: &Anatomy, out: &Path, opts: &CohortOptions, i: usize) -> Result<SubjectSummary> {
    let s = synthesize(anat, opts.seed, i)?;
    let id = subject_id(i);
    let dir = out.join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| data_err(&dir, format!("cannot create: {e}")))?;
    nifti::write(dir.join(FLAIR), &s.flair, DataType::F32)?;
    nifti::write(dir.join(T1), &s.t1, DataType::F32)?;
    nifti::write(dir.join(WMH), &s.wmh, DataType::U8)?;
    nifti::write(dir.join(BRAINMASK), &s.brainmask, DataType::U8)?;
    if opts.preview {
        write_preview(&dir.join("preview.png"), &s)?;
    }
    let lesion_voxels = s.wmh.data.iter().filter(|&&v| v == 1.0).count();
    let other_voxels = s.wmh.data.iter().filter(|&&v| v == 2.0).count();
    let vox_ml = s.flair.header.pixdim().iter().product::<f64>().abs() / 1000.0;
    Ok(SubjectSummary {
        id,
        lesions: s.lesions,
        lesion_voxels,
        lesion_ml: lesion_voxels as f64 * vox_ml,
        other_voxels,
    })
}

// ---------------------------------------------------------------------------------------------
// Preview.

/// Writes a PNG of axial slices: FLAIR, FLAIR with lesion outlines (red: label 1, cyan:
/// label 2), T1; the slice with the most lesion voxels is one of them.
pub fn write_preview(path: &Path, s: &Subject) -> Result<()> {
    let f = s
        .flair
        .data
        .view()
        .into_dimensionality::<Ix3>()
        .expect("3-D");
    let t = s.t1.data.view().into_dimensionality::<Ix3>().expect("3-D");
    let lab = s.wmh.data.view().into_dimensionality::<Ix3>().expect("3-D");
    let m = s
        .brainmask
        .data
        .view()
        .into_dimensionality::<Ix3>()
        .expect("3-D");
    let (nx, ny, nz) = f.dim();
    // Slices: across the brain's extent in z, plus the one with the most lesion.
    let zs: Vec<usize> = (0..nz)
        .filter(|&k| m.index_axis(Axis(2), k).iter().any(|&v| v > 0.0))
        .collect();
    let (z0, z1) = (*zs.first().unwrap_or(&0), *zs.last().unwrap_or(&(nz - 1)));
    let mut slices: Vec<usize> = [0.42, 0.55, 0.65, 0.75]
        .iter()
        .map(|fr| z0 + ((z1 - z0) as f64 * fr) as usize)
        .collect();
    let best = (0..nz)
        .max_by_key(|&k| {
            lab.index_axis(Axis(2), k)
                .iter()
                .filter(|&&v| v == 1.0)
                .count()
        })
        .unwrap_or(nz / 2);
    if !slices.contains(&best) {
        slices.push(best);
        slices.sort();
    }
    let window = |a: &ndarray::ArrayView3<f32>| -> (f32, f32) {
        let mut v: Vec<f32> = a
            .iter()
            .zip(m.iter())
            .filter(|(_, &mm)| mm > 0.0)
            .map(|(&x, _)| x)
            .collect();
        if v.is_empty() {
            return (0.0, 1.0);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        (
            v[v.len() / 200],
            v[(v.len() * 999) / 1000].max(v[v.len() / 200] + 1e-6),
        )
    };
    let (flo, fhi) = window(&f);
    let (tlo, thi) = window(&t);
    const Z: usize = 3; // pixels per voxel
    let (w, h) = (nx * Z, ny * Z);
    let cols = slices.len();
    let (iw, ih) = (cols * w, 3 * h);
    let mut img = vec![0u8; iw * ih * 3];
    let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
        let o = (y * iw + x) * 3;
        img[o..o + 3].copy_from_slice(&rgb);
    };
    for (ci, &k) in slices.iter().enumerate() {
        for row in 0..3 {
            for i in 0..nx {
                for j in 0..ny {
                    let (v, lo, hi) = if row < 2 {
                        (f[[i, j, k]], flo, fhi)
                    } else {
                        (t[[i, j, k]], tlo, thi)
                    };
                    let gval = (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8;
                    // Anterior at the top, subject's left on the left (neurological).
                    for a in 0..Z {
                        for b in 0..Z {
                            put(
                                ci * w + i * Z + a,
                                row * h + (ny - 1 - j) * Z + b,
                                [gval; 3],
                            );
                        }
                    }
                }
            }
        }
        // Outlines on the middle row: edges between a labelled voxel and a different one.
        for i in 0..nx {
            for j in 0..ny {
                let l = lab[[i, j, k]];
                if l == 0.0 {
                    continue;
                }
                let colour = if l == 1.0 {
                    [255, 40, 40]
                } else {
                    [40, 220, 255]
                };
                let px = ci * w + i * Z;
                let py = h + (ny - 1 - j) * Z;
                let diff = |di: isize, dj: isize| {
                    let (a, b) = (i as isize + di, j as isize + dj);
                    a < 0
                        || b < 0
                        || a >= nx as isize
                        || b >= ny as isize
                        || lab[[a as usize, b as usize, k]] != l
                };
                for q in 0..Z {
                    if diff(-1, 0) {
                        put(px, py + q, colour);
                    }
                    if diff(1, 0) {
                        put(px + Z - 1, py + q, colour);
                    }
                    if diff(0, 1) {
                        put(px + q, py, colour);
                    }
                    if diff(0, -1) {
                        put(px + q, py + Z - 1, colour);
                    }
                }
            }
        }
    }
    let file =
        std::fs::File::create(path).map_err(|e| data_err(path, format!("cannot create: {e}")))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), iw as u32, ih as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc
        .write_header()
        .map_err(|e| data_err(path, e.to_string()))?;
    wr.write_image_data(&img)
        .map_err(|e| data_err(path, e.to_string()))?;
    wr.finish().map_err(|e| data_err(path, e.to_string()))?;
    Ok(())
}
