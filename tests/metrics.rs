//! Lesion metrics (`kiln::lesions::metrics`) and the cohort table (`kiln::lesions::table`).
//!
//! Every expected value is worked out by hand in the comments, or computed by an independent
//! brute-force reference written here (all pairs of voxels for the distance transform and HD95,
//! NumPy's percentile formula), never by the code under test.

use kiln::lesions::metrics::{
    boundary, dice, evaluate, evaluate_volumes, hd95, label_components, lesion_counts, squared_edt,
    LesionCounts, Metrics,
};
use kiln::lesions::table::{quantile, summarize, Summary};
use ndarray::{Array3, ArrayD, IxDyn};

/// A mask of shape `dim` with the listed voxels set.
fn mask(dim: (usize, usize, usize), on: &[[usize; 3]]) -> Array3<bool> {
    let mut m = Array3::from_elem(dim, false);
    for &[i, j, k] in on {
        m[[i, j, k]] = true;
    }
    m
}

/// A mask of shape `dim` with the box `lo..hi` (per axis, half-open) set.
fn cube(dim: (usize, usize, usize), lo: [usize; 3], hi: [usize; 3]) -> Array3<bool> {
    Array3::from_shape_fn(dim, |(i, j, k)| {
        (lo[0]..hi[0]).contains(&i) && (lo[1]..hi[1]).contains(&j) && (lo[2]..hi[2]).contains(&k)
    })
}

// ---------------------------------------------------------------- Dice

#[test]
fn dice_of_known_overlaps() {
    let d = (4, 4, 4);
    // P: 4 voxels, G: 6 voxels, 3 shared: 2·3 / (4 + 6) = 0.6.
    let p = mask(d, &[[0, 0, 0], [0, 0, 1], [0, 0, 2], [3, 3, 3]]);
    let g = mask(
        d,
        &[
            [0, 0, 0],
            [0, 0, 1],
            [0, 0, 2],
            [1, 0, 0],
            [1, 1, 1],
            [2, 2, 2],
        ],
    );
    assert_eq!(dice(p.view(), g.view()), 0.6);
    // Identical: 1; disjoint: 0; both empty: 1 by definition.
    assert_eq!(dice(g.view(), g.view()), 1.0);
    let q = mask(d, &[[3, 3, 3]]);
    assert_eq!(dice(q.view(), g.view()), 0.0);
    let e = mask(d, &[]);
    assert_eq!(dice(e.view(), e.view()), 1.0);
    assert_eq!(dice(e.view(), g.view()), 0.0);
}

// ---------------------------------------------------------------- components

#[test]
fn diagonal_contact_makes_separate_components_face_contact_joins() {
    let d = (3, 3, 3);
    // Edge contact (differ in two coordinates): two lesions under 6-connectivity.
    let (_, n) = label_components(mask(d, &[[0, 0, 0], [1, 1, 0]]).view());
    assert_eq!(n, 2);
    // Corner contact (differ in all three): two lesions.
    let (_, n) = label_components(mask(d, &[[0, 0, 0], [1, 1, 1]]).view());
    assert_eq!(n, 2);
    // Face contact: one lesion; a chain of face contacts bending around: still one.
    let (_, n) = label_components(mask(d, &[[0, 0, 0], [1, 0, 0]]).view());
    assert_eq!(n, 1);
    let (_, n) =
        label_components(mask(d, &[[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1]]).view());
    assert_eq!(n, 1);
    // Empty: none.
    let (l, n) = label_components(mask(d, &[]).view());
    assert_eq!(n, 0);
    assert!(l.iter().all(|&x| x == 0));
}

#[test]
fn components_are_numbered_in_row_major_order_like_scipy() {
    // scipy.ndimage.label scans in C order: the component whose first voxel comes first in
    // row-major order is 1. (0,2,0) precedes (1,0,0) and (2,2,2).
    let d = (3, 3, 3);
    let m = mask(d, &[[1, 0, 0], [1, 0, 1], [0, 2, 0], [2, 2, 2]]);
    let (l, n) = label_components(m.view());
    assert_eq!(n, 3);
    assert_eq!(l[[0, 2, 0]], 1);
    assert_eq!(l[[1, 0, 0]], 2);
    assert_eq!(l[[1, 0, 1]], 2);
    assert_eq!(l[[2, 2, 2]], 3);
    assert_eq!(l[[0, 0, 0]], 0);
}

// ---------------------------------------------------------------- lesion-wise

/// GT lesions A, B, C; predicted lesions a1, a2 (both on A), b (on B), f (on nothing).
fn lesion_case() -> (Array3<u8>, Array3<bool>) {
    let d = (10, 10, 10);
    let mut gt = Array3::<u8>::zeros(d);
    for idx in [[1, 1, 1], [1, 1, 2], [1, 1, 3], [1, 1, 4]] {
        gt[idx] = 1; // A: a rod of 4
    }
    for idx in [[5, 5, 5], [5, 6, 5]] {
        gt[idx] = 1; // B
    }
    gt[[8, 8, 8]] = 1; // C: missed
    let pred = mask(
        d,
        &[
            [1, 1, 1],
            [1, 2, 1], // a1: overlaps A at (1,1,1)
            [1, 1, 4], // a2: overlaps A at (1,1,4), not face-connected to a1 through P
            [5, 6, 5],
            [5, 7, 5], // b
            [3, 8, 0],
            [3, 8, 1], // f
        ],
    );
    (gt, pred)
}

#[test]
fn lesion_wise_tpf_ppv_fpf_of_a_known_set() {
    let (gt, pred) = lesion_case();
    let g = gt.mapv(|l| l == 1);
    assert_eq!(
        lesion_counts(g.view(), pred.view()),
        LesionCounts {
            gt_lesions: 3,
            gt_lesions_detected: 2,
            pred_lesions: 4,
            pred_lesions_true: 3,
        }
    );
    let m = evaluate(gt.view(), pred.view(), [1.0, 1.0, 1.0]).unwrap();
    // tpf: A and B found of A, B, C = 2/3; ppv: a1, a2, b of 4 = 3/4; fpf = 1/4.
    assert_eq!(m.tpf, Some(2.0 / 3.0));
    assert_eq!(m.ppv, Some(0.75));
    assert_eq!(m.fpf, Some(0.25));
    // Voxels: |G| = 7, |P| = 7, |P ∩ G| = (1,1,1), (1,1,4), (5,6,5) = 3: dsc = 6/14.
    assert_eq!(m.dsc, 6.0 / 14.0);
    assert_eq!(m.volume_diff, Some(0.0));
    assert_eq!((m.gt_lesions, m.pred_lesions), (3, 4));
}

#[test]
fn volumes_use_the_voxel_size() {
    let (gt, pred) = lesion_case();
    let mut pred = pred;
    pred[[9, 9, 9]] = true; // |P| = 8, |G| = 7
    let m = evaluate(gt.view(), pred.view(), [0.5, 2.0, 3.0]).unwrap();
    // One voxel is 0.5 · 2 · 3 = 3 mm³.
    assert_eq!(m.gt_volume_mm3, 21.0);
    assert_eq!(m.pred_volume_mm3, 24.0);
    assert_eq!(m.volume_diff, Some(1.0 / 7.0));
}

#[test]
fn label_two_is_ignored_everywhere() {
    let d = (8, 8, 8);
    let mut gt = Array3::<u8>::zeros(d);
    gt[[1, 1, 1]] = 1;
    gt[[1, 1, 2]] = 1;
    // Other pathology: a slab at x = 5.
    for j in 0..8 {
        for k in 0..8 {
            gt[[5, j, k]] = 2;
        }
    }
    // The prediction: the lesion exactly, a component wholly inside label 2, and a component
    // crossing label 2 from x = 4 to x = 6 at (y, z) = (3, 3).
    let mut pred = mask(d, &[[1, 1, 1], [1, 1, 2], [5, 0, 0], [5, 0, 1]]);
    for i in 4..=6 {
        pred[[i, 3, 3]] = true;
    }
    let m = evaluate(gt.view(), pred.view(), [1.0, 1.0, 1.0]).unwrap();
    // After removing label 2: P = the lesion (2 voxels) + (4,3,3) + (6,3,3), the crossing
    // component cut in two. Predicted lesions: the true one and two single false voxels.
    assert_eq!((m.pred_lesions, m.pred_lesions_true), (3, 1));
    assert_eq!(m.ppv, Some(1.0 / 3.0));
    assert_eq!(m.tpf, Some(1.0));
    // dsc = 2·2 / (4 + 2); volumes count 4 predicted voxels, not 7.
    assert_eq!(m.dsc, 4.0 / 6.0);
    assert_eq!(m.pred_volume_mm3, 4.0);
    assert_eq!(m.volume_diff, Some(1.0));

    // A prediction only inside label 2 equals an empty prediction.
    let inside = mask(d, &[[1, 1, 1], [1, 1, 2], [5, 2, 2], [5, 2, 3]]);
    let m = evaluate(gt.view(), inside.view(), [1.0, 1.0, 1.0]).unwrap();
    assert_eq!(m.dsc, 1.0);
    assert_eq!((m.pred_lesions, m.ppv), (1, Some(1.0)));
    // Both masks are the same 2-voxel rod: every surface distance is 0.
    assert_eq!(m.hd95, Some(0.0));
}

// ---------------------------------------------------------------- HD95

#[test]
fn hd95_of_two_single_voxels_is_their_distance_in_mm() {
    let d = (5, 6, 4);
    let p = mask(d, &[[0, 0, 0]]);
    let g = mask(d, &[[3, 4, 2]]);
    // Spacing (0.5, 2, 1.5): offsets 3, 4, 2 voxels are 1.5, 8, 3 mm:
    // sqrt(2.25 + 64 + 9) = sqrt(75.25). Both directions give it, so every percentile does.
    let s = [0.5, 2.0, 1.5];
    let want = 75.25f64.sqrt();
    assert_eq!(hd95(p.view(), g.view(), s), Some(want));
    assert_eq!(hd95(g.view(), p.view(), s), Some(want));
    // Coincident voxels: 0.
    assert_eq!(hd95(p.view(), p.view(), s), Some(0.0));
}

#[test]
fn hd95_of_concentric_cubes() {
    // G = [1, 9)³ (side 8), P = [3, 7)³ (side 4), in a 10³ volume with 1 mm voxels.
    // P's boundary: 4³ - 2³ = 56 voxels, each with a coordinate at 3 or 6, i.e. 2 voxels from
    // G's face (nearest point of a cube's shell from inside: the nearest face): 56 × 2.
    // G's boundary: 8³ - 6³ = 296 voxels; the nearest point of P's boundary (the shell of the
    // solid [3, 6]³) from outside is the clamp, at per-axis distance 2 (coord 1 or 8), 1 (2 or
    // 7), 0 (3..6): d² = sum of squares. Counting: d² = 4: 6 faces × 4² = 96 (one axis at 2,
    // others 0), plus the 56 from P: 152; d² = 5 (one axis 2, one 1, one 0): 96; d² = 6
    // (2, 1, 1): 24; d² = 8 (2, 2, 0): 48; d² = 9 (2, 2, 1): 24; d² = 12 (2, 2, 2): 8.
    // 352 values; NumPy's 95th percentile is at rank 0.95 · 351 = 333.45, between sorted
    // positions 333 and 334, both in the d² = 9 block (positions 320..343): HD95 = 3.
    let d = (10, 10, 10);
    let g = cube(d, [1, 1, 1], [9, 9, 9]);
    let p = cube(d, [3, 3, 3], [7, 7, 7]);
    assert_eq!(boundary(p.view()).iter().filter(|&&b| b).count(), 56);
    assert_eq!(boundary(g.view()).iter().filter(|&&b| b).count(), 296);
    assert_eq!(hd95(p.view(), g.view(), [1.0; 3]), Some(3.0));
    // Doubling every voxel size doubles every distance.
    assert_eq!(hd95(p.view(), g.view(), [2.0; 3]), Some(6.0));
}

#[test]
fn hd95_is_undefined_for_an_empty_mask() {
    let d = (4, 4, 4);
    let e = mask(d, &[]);
    let g = mask(d, &[[1, 1, 1]]);
    assert_eq!(hd95(e.view(), g.view(), [1.0; 3]), None);
    assert_eq!(hd95(g.view(), e.view(), [1.0; 3]), None);
    assert_eq!(hd95(e.view(), e.view(), [1.0; 3]), None);
}

#[test]
fn a_mask_touching_the_volume_edge_has_its_edge_voxels_on_the_boundary() {
    // The whole 3³ volume: every voxel but the centre has a face neighbour beyond the edge
    // (which counts as outside), so the boundary is 26 voxels.
    let b = boundary(Array3::from_elem((3, 3, 3), true).view());
    assert_eq!(b.iter().filter(|&&x| x).count(), 26);
    assert!(!b[[1, 1, 1]]);
}

/// xorshift64*: a small deterministic generator for the random masks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn random_mask(rng: &mut Rng, dim: (usize, usize, usize), density: f64) -> Array3<bool> {
    Array3::from_shape_fn(dim, |_| rng.unit() < density)
}

/// Squared distance in mm² between voxels `a` and `b`, summed in axis order
/// `((s0² dx²) + s1² dy²) + s2² dz²`, the order in which the separable transform adds them, so
/// equal minima are equal bit for bit.
fn sq_dist(a: [usize; 3], b: [usize; 3], s: [f64; 3]) -> f64 {
    let t = |d: usize| {
        let x = a[d].abs_diff(b[d]) as f64;
        (s[d] * s[d]) * (x * x)
    };
    t(0) + t(1) + t(2)
}

fn voxels(m: &Array3<bool>) -> Vec<[usize; 3]> {
    m.indexed_iter()
        .filter(|(_, &x)| x)
        .map(|((i, j, k), _)| [i, j, k])
        .collect()
}

/// Boundary by definition: mask voxels with a face neighbour outside the mask or the volume.
fn boundary_ref(m: &Array3<bool>) -> Array3<bool> {
    let (nx, ny, nz) = m.dim();
    Array3::from_shape_fn(m.dim(), |(i, j, k)| {
        let out = |a: isize, b: isize, c: isize| {
            a < 0
                || b < 0
                || c < 0
                || a >= nx as isize
                || b >= ny as isize
                || c >= nz as isize
                || !m[[a as usize, b as usize, c as usize]]
        };
        let (i, j, k) = (i as isize, j as isize, k as isize);
        m[[i as usize, j as usize, k as usize]]
            && (out(i - 1, j, k)
                || out(i + 1, j, k)
                || out(i, j - 1, k)
                || out(i, j + 1, k)
                || out(i, j, k - 1)
                || out(i, j, k + 1))
    })
}

/// NumPy's `percentile(x, q)` with linear interpolation, from its documented formula.
fn np_percentile(mut x: Vec<f64>, q: f64) -> f64 {
    x.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let h = q / 100.0 * (x.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    x[lo] + (h - lo as f64) * (x[hi] - x[lo])
}

/// medpy's hd95 by brute force: all pairs of boundary voxels.
fn hd95_ref(p: &Array3<bool>, g: &Array3<bool>, s: [f64; 3]) -> f64 {
    let (bp, bg) = (voxels(&boundary_ref(p)), voxels(&boundary_ref(g)));
    let directed = |from: &[[usize; 3]], to: &[[usize; 3]]| -> Vec<f64> {
        from.iter()
            .map(|&a| {
                to.iter()
                    .map(|&b| sq_dist(a, b, s))
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    };
    let mut d = directed(&bp, &bg);
    d.extend(directed(&bg, &bp));
    np_percentile(d, 95.0)
}

#[test]
fn edt_and_hd95_agree_exactly_with_brute_force_on_random_masks() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Spacings with exact binary fractions and spacings without (0.7, 1.1, 3.3 are rounded):
    // both must agree bit for bit, since both sides add the same rounded terms in the same
    // order and the transform only chooses which sum is smallest.
    let spacings = [
        [1.0, 1.0, 1.0],
        [0.5, 1.25, 2.0],
        [0.7, 1.1, 3.3],
        [0.9375, 0.9375, 3.0],
    ];
    let mut checked_hd = 0;
    for trial in 0..120 {
        let dim = (
            1 + rng.below(9) as usize,
            1 + rng.below(9) as usize,
            1 + rng.below(9) as usize,
        );
        let s = spacings[trial % spacings.len()];
        // Densities from almost empty (lines without features) to almost full.
        let density = [0.02, 0.1, 0.3, 0.7][(trial / 4) % 4];
        let f = random_mask(&mut rng, dim, density);
        let feats = voxels(&f);
        let got = squared_edt(f.view(), s);
        for ((i, j, k), &v) in got.indexed_iter() {
            let want = feats
                .iter()
                .map(|&b| sq_dist([i, j, k], b, s))
                .fold(f64::INFINITY, f64::min);
            assert_eq!(
                v,
                want,
                "trial {trial}: EDT at {:?} of {dim:?}, spacing {s:?}",
                [i, j, k]
            );
        }

        let p = random_mask(&mut rng, dim, density);
        let g = random_mask(&mut rng, dim, 0.3);
        assert_eq!(
            boundary(p.view()),
            boundary_ref(&p),
            "trial {trial}: boundary"
        );
        let got = hd95(p.view(), g.view(), s);
        if p.iter().any(|&x| x) && g.iter().any(|&x| x) {
            assert_eq!(
                got,
                Some(hd95_ref(&p, &g, s)),
                "trial {trial}: hd95, {dim:?}"
            );
            checked_hd += 1;
        } else {
            assert_eq!(got, None);
        }
    }
    assert!(
        checked_hd > 80,
        "only {checked_hd} HD95 cases were non-empty"
    );
}

// ---------------------------------------------------------------- volumes and errors

fn dynd(a: Array3<f32>) -> ArrayD<f32> {
    a.into_dyn()
}

#[test]
fn float_volumes_are_read_as_labels_and_thresholded_predictions() {
    let (gt, pred) = lesion_case();
    let gt_f = dynd(gt.mapv(|l| l as f32));
    // A probability map: 0.9 on the predicted voxels, 0.4 elsewhere (below 0.5: background).
    let pred_f = dynd(pred.mapv(|b| if b { 0.9 } else { 0.4 }));
    let m = evaluate_volumes(&gt_f, "gt.nii", &pred_f, "pred.nii", [1.0; 3]).unwrap();
    assert_eq!(m.ppv, Some(0.75));
    // A trailing axis of size 1 ([nx, ny, nz, 1]) is accepted.
    let gt4 = gt_f
        .clone()
        .into_shape_with_order(IxDyn(&[10, 10, 10, 1]))
        .unwrap();
    let m4 = evaluate_volumes(&gt4, "gt.nii", &pred_f, "pred.nii", [1.0; 3]).unwrap();
    assert_eq!(m4, m);
}

#[test]
fn bad_inputs_are_errors_naming_the_array() {
    let (gt, pred) = lesion_case();
    let gt_f = dynd(gt.mapv(|l| l as f32));
    let pred_f = dynd(pred.mapv(|b| b as u8 as f32));

    let mut bad = gt_f.clone();
    bad[[2, 3, 4]] = 3.0;
    let e = evaluate_volumes(&bad, "gt.nii", &pred_f, "pred.nii", [1.0; 3]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("gt.nii") && msg.contains("[2, 3, 4]"), "{msg}");

    let mut nan = pred_f.clone();
    nan[[0, 0, 0]] = f32::NAN;
    let msg = evaluate_volumes(&gt_f, "gt.nii", &nan, "pred.nii", [1.0; 3])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pred.nii") && msg.contains("NaN"), "{msg}");

    let small = ArrayD::<f32>::zeros(IxDyn(&[10, 10, 9]));
    let msg = evaluate_volumes(&gt_f, "gt.nii", &small, "pred.nii", [1.0; 3])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gt.nii") && msg.contains("pred.nii"), "{msg}");

    let flat = ArrayD::<f32>::zeros(IxDyn(&[10, 10]));
    assert!(evaluate_volumes(&flat, "gt.nii", &pred_f, "pred.nii", [1.0; 3]).is_err());
    assert!(evaluate_volumes(&gt_f, "gt.nii", &pred_f, "pred.nii", [1.0, 0.0, 1.0]).is_err());
    assert!(evaluate_volumes(&gt_f, "gt.nii", &pred_f, "pred.nii", [1.0, f64::NAN, 1.0]).is_err());
}

// ---------------------------------------------------------------- JSON

#[test]
fn json_has_the_metric_keys_and_null_for_undefined() {
    // Empty GT, one predicted voxel: tpf, volume_diff and hd95 are undefined; ppv = 0, fpf = 1,
    // dsc = 0.
    let gt = Array3::<u8>::zeros((3, 3, 3));
    let pred = mask((3, 3, 3), &[[1, 1, 1]]);
    let m = evaluate(gt.view(), pred.view(), [1.0, 1.0, 2.0]).unwrap();
    let line = m.to_json();
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
    let mut want = vec![
        "dsc",
        "tpf",
        "ppv",
        "fpf",
        "volume_diff",
        "hd95",
        "gt_volume_mm3",
        "pred_volume_mm3",
        "gt_lesions",
        "pred_lesions",
        "gt_lesions_detected",
        "pred_lesions_true",
    ];
    want.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, want);
    assert_eq!(o["dsc"].as_f64(), Some(0.0));
    // Floats print as floats (`0.0`, not `0`); counts as integers.
    assert!(line.contains("\"dsc\":0.0,"), "{line}");
    assert!(line.contains("\"pred_lesions\":1,"), "{line}");
    assert!(o["tpf"].is_null());
    assert!(o["volume_diff"].is_null());
    assert!(o["hd95"].is_null());
    assert_eq!(o["ppv"].as_f64(), Some(0.0));
    assert_eq!(o["fpf"].as_f64(), Some(1.0));
    assert_eq!(o["pred_volume_mm3"].as_f64(), Some(2.0));
    assert_eq!(o["pred_lesions"].as_u64(), Some(1));

    // The lesion case: every value defined and equal to the hand-computed ones.
    let (gt, pred) = lesion_case();
    let m = evaluate(gt.view(), pred.view(), [1.0; 3]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    assert_eq!(v["ppv"].as_f64(), Some(0.75));
    assert_eq!(v["tpf"].as_f64(), Some(2.0 / 3.0));
    assert!(v["hd95"].as_f64().is_some());
}

// ---------------------------------------------------------------- table

#[test]
fn quantiles_follow_pandas_linear_interpolation() {
    // pandas: Series([1, 2, 3, 4]).quantile(.25) = 1.75 (rank 0.75 between 1 and 2).
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(quantile(&x, 0.25), 1.75);
    assert_eq!(quantile(&x, 0.5), 2.5);
    assert_eq!(quantile(&x, 0.75), 3.25);
    assert_eq!(quantile(&x, 0.0), 1.0);
    assert_eq!(quantile(&x, 1.0), 4.0);
    // [1..5]: ranks 1, 2, 3 fall on values.
    let y = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(
        (quantile(&y, 0.25), quantile(&y, 0.5), quantile(&y, 0.75)),
        (2.0, 3.0, 4.0)
    );
    // [10, 20, 40]: 75% at rank 1.5, halfway between 20 and 40.
    assert_eq!(quantile(&[10.0, 20.0, 40.0], 0.75), 30.0);
    assert!(quantile(&[], 0.5).is_nan());
}

#[test]
fn describe_matches_pandas() {
    // Unsorted input, mean 2.5, sample std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3).
    let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
    assert_eq!(
        s,
        Summary {
            count: 4,
            mean: 2.5,
            std: (5.0f64 / 3.0).sqrt(),
            min: 1.0,
            q25: 1.75,
            q50: 2.5,
            q75: 3.25,
            max: 4.0,
        }
    );
    // NaN is skipped: [1, 3] remain; std = sqrt(2).
    let s = Summary::of(&[1.0, f64::NAN, 3.0]);
    assert_eq!((s.count, s.mean, s.q25, s.std), (2, 2.0, 1.5, 2f64.sqrt()));
    // One value: std NaN (ddof = 1), quartiles the value.
    let s = Summary::of(&[7.0]);
    assert_eq!((s.count, s.min, s.q50, s.max), (1, 7.0, 7.0, 7.0));
    assert!(s.std.is_nan());
    let s = Summary::of(&[]);
    assert_eq!(s.count, 0);
    assert!(s.mean.is_nan() && s.min.is_nan() && s.max.is_nan());
}

fn metrics_with(dsc: f64, tpf: Option<f64>) -> Metrics {
    Metrics {
        dsc,
        tpf,
        ppv: Some(1.0),
        fpf: Some(0.0),
        volume_diff: None,
        hd95: Some(dsc * 10.0),
        gt_volume_mm3: 1.0,
        pred_volume_mm3: 2.0,
        gt_lesions: 1,
        pred_lesions: 2,
        gt_lesions_detected: 1,
        pred_lesions_true: 2,
    }
}

#[test]
fn cohort_table_summarizes_each_metric_and_prints_aligned() {
    let rows = vec![
        ("s1".to_string(), metrics_with(0.1, Some(1.0))),
        ("s2".to_string(), metrics_with(0.2, None)),
        ("s3".to_string(), metrics_with(0.3, Some(0.5))),
        ("s4".to_string(), metrics_with(0.4, Some(0.0))),
    ];
    let t = summarize(&rows);
    let row = |name: &str| t.rows.iter().find(|(n, _)| n == name).unwrap().1;
    // dsc [0.1, 0.2, 0.3, 0.4]: 25% = 0.1 + 0.75 · (0.2 - 0.1).
    let d = row("dsc");
    assert_eq!(d.count, 4);
    assert!((d.q25 - 0.175).abs() < 1e-15 && (d.q75 - 0.325).abs() < 1e-15);
    // tpf skips the undefined subject: [1, 0.5, 0] → median 0.5, mean 0.5, std 0.5.
    let p = row("tpf");
    assert_eq!((p.count, p.q50, p.mean, p.std), (3, 0.5, 0.5, 0.5));
    // volume_diff is undefined everywhere: count 0, NaN.
    let v = row("volume_diff");
    assert_eq!(v.count, 0);
    assert!(v.mean.is_nan());

    let text = t.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + t.rows.len());
    assert!(lines[0].contains("25%") && lines[0].contains("std"));
    // Aligned: every line has the same width, and the columns line up.
    let width = lines[0].len();
    assert!(lines.iter().all(|l| l.len() == width), "{text}");
    assert!(text.contains("0.175000"), "{text}");
    assert!(text.contains("NaN"), "{text}");
    let dsc_line = lines.iter().find(|l| l.starts_with("dsc ")).unwrap();
    assert!(dsc_line.ends_with("0.400000"), "{dsc_line}");
}

// ---------------------------------------------------------------- the command

/// A fresh scratch directory for this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln_metrics_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_nifti(path: &std::path::Path, data: Array3<f32>, spacing: [f64; 3]) {
    let mut affine = [[0.0; 4]; 4];
    for (d, s) in spacing.iter().enumerate() {
        affine[d][d] = *s;
    }
    affine[3][3] = 1.0;
    let v = kiln::nifti::Volume::new(data.into_dyn(), affine).unwrap();
    kiln::nifti::write(path, &v, kiln::nifti::DataType::U8).unwrap();
}

fn kiln_cmd(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn eval_command_prints_one_json_line_and_names_both_files_on_mismatch() {
    let dir = scratch("cli");
    let s = [0.5, 2.0, 1.5];
    // GT: one lesion voxel at (3, 4, 2) and a label-2 voxel; prediction: one voxel at the
    // origin. Dice 0, tpf 0, ppv 0, HD95 = sqrt(1.5² + 8² + 3²) = sqrt(75.25) mm (as in
    // `hd95_of_two_single_voxels_is_their_distance_in_mm`); one voxel is 1.5 mm³.
    let mut gt = Array3::<f32>::zeros((5, 6, 4));
    gt[[3, 4, 2]] = 1.0;
    gt[[1, 1, 1]] = 2.0;
    let mut pred = Array3::<f32>::zeros((5, 6, 4));
    pred[[0, 0, 0]] = 1.0;
    pred[[1, 1, 1]] = 1.0; // in label 2: ignored
    let (g, p) = (dir.join("gt.nii.gz"), dir.join("pred.nii"));
    write_nifti(&g, gt, s);
    write_nifti(&p, pred, s);

    let out = kiln_cmd(&[
        "lesions".as_ref(),
        "eval".as_ref(),
        g.as_os_str(),
        p.as_os_str(),
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["dsc"].as_f64(), Some(0.0));
    assert_eq!(v["tpf"].as_f64(), Some(0.0));
    assert_eq!(v["ppv"].as_f64(), Some(0.0));
    assert_eq!(v["fpf"].as_f64(), Some(1.0));
    assert_eq!(v["volume_diff"].as_f64(), Some(0.0));
    assert_eq!(v["gt_volume_mm3"].as_f64(), Some(1.5));
    assert_eq!(v["pred_volume_mm3"].as_f64(), Some(1.5));
    let hd = v["hd95"].as_f64().unwrap();
    // pixdim goes through the file as f32: 0.5, 2 and 1.5 are exact in f32.
    assert_eq!(hd, 75.25f64.sqrt());

    // A prediction with other voxel sizes, and one with another shape: errors naming both.
    let q = dir.join("other_spacing.nii");
    write_nifti(&q, Array3::zeros((5, 6, 4)), [1.0, 2.0, 1.5]);
    let r = dir.join("other_shape.nii");
    write_nifti(&r, Array3::zeros((5, 6, 5)), s);
    for bad in [&q, &r] {
        let out = kiln_cmd(&[
            "lesions".as_ref(),
            "eval".as_ref(),
            g.as_os_str(),
            bad.as_os_str(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("gt.nii.gz") && err.contains(bad.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
