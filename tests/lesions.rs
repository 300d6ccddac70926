//! The lesion pipeline: patch grid coverage and reconstruction, z-score normalisation inside
//! the mask, lesion-balanced sampling, the tutorial's loss against a hand computation,
//! training that lowers the loss and resumes bit-exactly, and inference keeping the source
//! geometry. Every expected value is computed here, independently of the code under test.

use kiln::lesions::infer::predict_subject;
use kiln::lesions::patches::{
    axis_starts, grid_positions, reconstruct, zscore_in_mask, PatchIndex, Subject,
};
use kiln::lesions::train::{loss, train, LossKind, TrainConfig};
use kiln::nifti::{self, DataType, Volume};
use kiln::{Generator, Tensor};
use ndarray::{s, Array3, Array4};
use std::path::{Path, PathBuf};

/// A fresh empty directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lesions-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An ellipsoidal "brain" mask of `shape`.
fn ellipsoid(shape: [usize; 3]) -> Array3<bool> {
    Array3::from_shape_fn(shape, |(i, j, k)| {
        let f = |x: usize, n: usize| {
            let c = (n as f64 - 1.0) / 2.0;
            (x as f64 - c) / (n as f64 / 2.0)
        };
        f(i, shape[0]).powi(2) + f(j, shape[1]).powi(2) + f(k, shape[2]).powi(2) < 0.8
    })
}

#[test]
fn axis_starts_follow_the_grid_and_reach_the_end() {
    // 0, 16, 32 fit in 64 with p = 32; 40 needs the extra start 40 - 32 = 8.
    assert_eq!(axis_starts(64, 32, 16).unwrap(), vec![0, 16, 32]);
    assert_eq!(axis_starts(40, 32, 16).unwrap(), vec![0, 8]);
    assert_eq!(axis_starts(32, 32, 16).unwrap(), vec![0]);
    assert_eq!(axis_starts(91, 32, 16).unwrap(), vec![0, 16, 32, 48, 59]);
    assert!(axis_starts(20, 32, 16).is_err());
}

#[test]
fn grid_patches_cover_every_roi_voxel_and_hold_roi() {
    let shape = [37, 29, 33];
    let roi = ellipsoid(shape);
    let (p, stride) = (8, 4);
    let starts = grid_positions(roi.view(), p, stride).unwrap();
    let mut covered = Array3::<bool>::from_elem(shape, false);
    for st in &starts {
        for (a, &n) in st.iter().zip(&shape) {
            // On the grid, or the last start of its axis.
            assert!(a % stride == 0 || *a == n - p, "start {st:?}");
        }
        let win = s![st[0]..st[0] + p, st[1]..st[1] + p, st[2]..st[2] + p];
        assert!(
            roi.slice(win).iter().any(|&b| b),
            "patch {st:?} holds no ROI voxel"
        );
        covered.slice_mut(win).fill(true);
    }
    for ((i, j, k), &r) in roi.indexed_iter() {
        assert!(
            !r || covered[[i, j, k]],
            "ROI voxel {:?} not covered",
            (i, j, k)
        );
    }
}

#[test]
fn averaging_overlapping_patches_reproduces_the_volume() {
    let shape = [21, 18, 26];
    let vol = Array3::from_shape_fn(shape, |(i, j, k)| {
        (i as f32 * 0.37 - j as f32 * 1.3 + (k * k) as f32 * 0.011).sin() * 100.0
    });
    let all = Array3::from_elem(shape, true);
    let (p, stride) = (8, 3);
    let starts = grid_positions(all.view(), p, stride).unwrap();
    let patches: Vec<Array3<f32>> = starts
        .iter()
        .map(|st| {
            vol.slice(s![st[0]..st[0] + p, st[1]..st[1] + p, st[2]..st[2] + p])
                .to_owned()
        })
        .collect();
    let rec = reconstruct(shape, &starts, &patches, -1.0).unwrap();
    assert_eq!(rec, vol);
    // Voxels that no patch covers get the fill value.
    let one = reconstruct(shape, &starts[..1], &patches[..1], -1.0).unwrap();
    assert_eq!(one[[20, 17, 25]], -1.0);
    assert_eq!(one[[0, 0, 0]], vol[[0, 0, 0]]);
}

#[test]
fn zscore_is_standard_inside_the_mask() {
    let shape = [12, 10, 9];
    let mask = ellipsoid(shape);
    let x = Array3::from_shape_fn(shape, |(i, j, k)| {
        50.0 + 7.0 * i as f32 + 3.0 * ((j * k) % 5) as f32
    });
    let (z, mean, std) = zscore_in_mask(x.view(), mask.view()).unwrap();
    // Independent two-pass statistics over the mask voxels.
    let vals: Vec<f64> = x
        .iter()
        .zip(mask.iter())
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v as f64)
        .collect();
    let n = vals.len() as f64;
    let m = vals.iter().sum::<f64>() / n;
    let sd = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt();
    assert!((mean - m).abs() < 1e-9 && (std - sd).abs() < 1e-9);
    let zin: Vec<f64> = z
        .iter()
        .zip(mask.iter())
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v as f64)
        .collect();
    let zm = zin.iter().sum::<f64>() / n;
    let zs = (zin.iter().map(|v| (v - zm) * (v - zm)).sum::<f64>() / n).sqrt();
    assert!(zm.abs() < 1e-5, "mean {zm}");
    assert!((zs - 1.0).abs() < 1e-5, "std {zs}");
    for ((idx, &v), &mk) in x.indexed_iter().zip(mask.iter()) {
        let expect = if mk {
            ((v as f64 - m) / sd) as f32
        } else {
            0.0
        };
        assert!((z[idx] - expect).abs() < 1e-5);
    }
    assert!(zscore_in_mask(x.view(), Array3::from_elem(shape, false).view()).is_err());
}

/// A subject of `shape` with random intensities, the whole volume as brain, and a lesion
/// cube at `lesion` (side 3) if given.
fn subject(id: &str, shape: [usize; 3], lesion: Option<[usize; 3]>, seed: u64) -> Subject {
    let mut g = Generator::new(seed);
    let mut label = Array3::<u8>::zeros(shape);
    if let Some(l) = lesion {
        label
            .slice_mut(s![l[0]..l[0] + 3, l[1]..l[1] + 3, l[2]..l[2] + 3])
            .fill(1);
    }
    let raw = Array4::from_shape_fn((2, shape[0], shape[1], shape[2]), |(c, i, j, k)| {
        let les = label[[i, j, k]] == 1;
        let base = if c == 0 { 100.0 } else { 60.0 };
        base + g.normal() as f32 * 5.0 + if les && c == 0 { 60.0 } else { 0.0 }
    });
    Subject::new(id, raw, label, Array3::from_elem(shape, true)).unwrap()
}

#[test]
fn lesion_balanced_sampling_draws_the_asked_fraction() {
    let subs = vec![
        subject("a", [32, 16, 16], Some([2, 2, 2]), 1),
        subject("b", [32, 16, 16], None, 2),
    ];
    let idx = PatchIndex::new(&subs, 8, 8).unwrap();
    // Positions: 4 x 2 x 2 per subject; the lesion cube at 2..5 lies in the first patch only.
    assert_eq!(idx.lesion.len(), 1);
    assert_eq!(idx.other.len(), 31);
    let mut g = Generator::new(7);
    let draws = idx.sample(200, Some(0.3), &mut g);
    let with_lesion = draws
        .iter()
        .filter(|(n, st)| {
            subs[*n]
                .label
                .slice(s![st[0]..st[0] + 8, st[1]..st[1] + 8, st[2]..st[2] + 8])
                .iter()
                .any(|&l| l == 1)
        })
        .count();
    assert_eq!(with_lesion, 60);
    // Uniform sampling: about 1 in 32 patches holds the lesion (binomial, 3 sigma = 0.037).
    let uni = idx.sample(2000, None, &mut g);
    let frac = uni
        .iter()
        .filter(|(n, st)| *n == 0 && *st == [0, 0, 0])
        .count() as f64
        / 2000.0;
    assert!(
        (frac - 1.0 / 32.0).abs() < 0.015,
        "uniform lesion fraction {frac}"
    );
}

#[test]
fn tutorial_loss_matches_a_hand_computation() {
    // p [1, 2, 1, 1, 4]: class-1 probabilities 0.2, 0.7, 0.5, 0 (the last clamped to 1e-7).
    let p1 = [0.2f32, 0.7, 0.5, 0.0];
    let mut v: Vec<f32> = p1.iter().map(|q| 1.0 - q).collect();
    v.extend(p1);
    let p = Tensor::from_vec(v, [1, 2, 1, 1, 4]);
    let y = Tensor::from_vec(vec![0i64, 1, 2, 1], [1, 1, 1, 4]);
    // Voxel 2 is ignored (label 2): mean of -log 0.8, -log 0.7, -log 1e-7 over 3 voxels.
    let terms = [-(0.8f64).ln(), -(0.7f64).ln(), -(1e-7f64).ln()];
    let want = terms.iter().sum::<f64>() / 3.0;
    let got = loss(&p, &y, LossKind::CrossEntropy).try_item().unwrap();
    assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    // Class weights [1, 4]: PyTorch's weighted mean sum w_y l / sum w_y.
    let want_w = (terms[0] + 4.0 * terms[1] + 4.0 * terms[2]) / 9.0;
    let got_w = loss(&p, &y, LossKind::WeightedCrossEntropy(4.0))
        .try_item()
        .unwrap();
    assert!(
        (got_w - want_w).abs() < 1e-4 * want_w,
        "{got_w} vs {want_w}"
    );
    // Dice on the lesion channel, voxel 2 removed: p = 0.2, 0.7, 0, t = 0, 1, 1:
    // 1 - (2 * 0.7 + 1) / (0.9 + 2 + 1).
    let dice = 1.0 - (2.0 * 0.7 + 1.0) / (0.9 + 2.0 + 1.0);
    let got_d = loss(&p, &y, LossKind::CrossEntropyDice).try_item().unwrap();
    assert!(
        (got_d - (want + dice)).abs() < 1e-4,
        "{got_d} vs {}",
        want + dice
    );
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        base: 2,
        patch: 8,
        stride: 8,
        batch_size: 2,
        epochs: 2,
        patches_per_epoch: 4,
        val_patches: 2,
        val_fraction: 0.34,
        patience: 0,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_on_a_repeated_patch() {
    // Three identical one-patch subjects: every batch is the same two patches, so the second
    // step's loss (after one update) is comparable with the first's.
    let s = subject("s", [8, 8, 8], Some([2, 3, 4]), 11);
    let subs: Vec<Subject> = ["a", "b", "c"]
        .iter()
        .map(|id| Subject {
            id: id.to_string(),
            ..s.clone()
        })
        .collect();
    let cfg = TrainConfig {
        patches_per_epoch: 2,
        ..tiny_config()
    };
    let out = scratch("lower");
    let o = train(&cfg, subs, &out, false).unwrap();
    assert_eq!(o.history.len(), 2);
    let (l1, l2) = (o.history[0].train_loss, o.history[1].train_loss);
    assert!(l2 < l1, "loss {l1} -> {l2}");
    for f in [
        "config.json",
        "best.safetensors",
        "last.safetensors",
        "optimizer.safetensors",
        "history.csv",
        "curves.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn resumed_training_continues_bit_exactly() {
    let subs = || {
        vec![
            subject("a", [16, 16, 8], Some([2, 2, 2]), 21),
            subject("b", [16, 16, 8], Some([9, 4, 3]), 22),
            subject("c", [16, 16, 8], None, 23),
        ]
    };
    let cfg = tiny_config();
    let whole = scratch("whole");
    let a = train(&cfg, subs(), &whole, false).unwrap();
    let parts = scratch("parts");
    let first = TrainConfig {
        epochs: 1,
        ..cfg.clone()
    };
    train(&first, subs(), &parts, false).unwrap();
    let b = train(&cfg, subs(), &parts, true).unwrap();
    assert_eq!(b.history.len(), 2);
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits());
        assert_eq!(x.val_loss.to_bits(), y.val_loss.to_bits());
    }
    for f in ["last.safetensors", "optimizer.safetensors"] {
        let (sa, sb) = (
            kiln::checkpoint::load(whole.join(f)).unwrap(),
            kiln::checkpoint::load(parts.join(f)).unwrap(),
        );
        assert_eq!(sa.len(), sb.len());
        assert!(!sa.is_empty());
        for (name, t) in sa.iter() {
            let u = sb
                .get(name)
                .unwrap_or_else(|| panic!("{f}: {name} missing"));
            let (va, vb) = (t.to_ndarray::<f32>(), u.to_ndarray::<f32>());
            match (va, vb) {
                (Ok(va), Ok(vb)) => {
                    let ba: Vec<u32> = va.iter().map(|x| x.to_bits()).collect();
                    let bb: Vec<u32> = vb.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(ba, bb, "{f}: {name} differs");
                }
                _ => assert_eq!(
                    t.try_to_vec::<f64>().unwrap(),
                    u.try_to_vec::<f64>().unwrap(),
                    "{f}: {name} differs"
                ),
            }
        }
    }
}

fn write_subject(dir: &Path, s: &Subject, affine: [[f64; 4]; 4]) {
    std::fs::create_dir_all(dir).unwrap();
    let put = |name: &str, a: Array3<f32>, dt: DataType| {
        let v = Volume::new(a.into_dyn(), affine).unwrap();
        nifti::write(dir.join(name), &v, dt).unwrap();
    };
    put(
        "FLAIR_brain.nii.gz",
        s.image.slice(s![0, .., .., ..]).to_owned(),
        DataType::F32,
    );
    put(
        "T1_brain.nii.gz",
        s.image.slice(s![1, .., .., ..]).to_owned(),
        DataType::F32,
    );
    put("wmh.nii.gz", s.label.mapv(|v| v as f32), DataType::U8);
    put(
        "brainmask.nii.gz",
        s.mask.mapv(|b| if b { 1.0 } else { 0.0 }),
        DataType::U8,
    );
}

#[test]
fn inference_keeps_the_source_geometry() {
    let run = scratch("infer-run");
    let subs = vec![
        subject("a", [16, 8, 8], Some([2, 2, 2]), 31),
        subject("b", [16, 8, 8], None, 32),
    ];
    let cfg = TrainConfig {
        epochs: 1,
        val_fraction: 0.5,
        ..tiny_config()
    };
    train(&cfg, subs, &run, false).unwrap();
    // An odd-sized subject with an oblique, shifted affine.
    let s = subject("x", [13, 10, 9], Some([4, 4, 4]), 33);
    let affine = [
        [0.9, 0.1, 0.0, -40.0],
        [-0.1, 1.1, 0.0, 12.5],
        [0.0, 0.0, 1.5, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let dir = scratch("infer-subject");
    write_subject(&dir, &s, affine);
    let mask = predict_subject(&run, &dir).unwrap();
    let flair = nifti::read(dir.join("FLAIR_brain.nii.gz")).unwrap();
    assert_eq!(mask.shape(), flair.shape());
    assert_eq!(mask.affine(), flair.affine());
    assert!(mask.data.iter().all(|&v| v == 0.0 || v == 1.0));
    let out = dir.join("mask.nii.gz");
    nifti::write(&out, &mask, DataType::U8).unwrap();
    let back = nifti::read(&out).unwrap();
    assert_eq!(back.shape(), &[13, 10, 9]);
    assert_eq!(back.affine(), flair.affine());
}

/// Seconds per compiled training step (forward, loss, backward, Adadelta) of the tutorial's
/// U-Net on a batch of 4 patches of 32^3, for base 8, 16 and 32. A measurement, not a check:
/// run it with `cargo test --release --test lesions -- --ignored --nocapture step_time`.
#[test]
#[ignore = "a timing measurement taking minutes on two cores, not a correctness check"]
fn step_time() {
    use kiln::functional::{self as F, Reduction};
    use kiln::nn::models::{UNet3d, UNet3dOptions};
    use kiln::nn::Module;
    use kiln::optim::Adadelta;
    let bases: Vec<usize> = std::env::var("KILN_BENCH_BASES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 16, 32]);
    for base in bases {
        let mut g = Generator::new(0);
        let net = UNet3d::new(2, 2, base, UNet3dOptions::default(), &mut g).unwrap();
        let mut opt = Adadelta::new(net.parameters());
        let n = 4 * 32 * 32 * 32;
        let x = Tensor::from_vec(
            (0..2 * n).map(|_| g.normal() as f32).collect::<Vec<_>>(),
            [4, 2, 32, 32, 32],
        );
        let y = Tensor::from_vec(
            (0..n).map(|i| (i % 3 == 0) as i64).collect::<Vec<_>>(),
            [4, 32, 32, 32],
        );
        let t0 = std::time::Instant::now();
        let step = kiln::compile::compile(&[&x, &y], |b| {
            opt.zero_grad();
            let p = net.forward(&b[0]);
            let l = F::cross_entropy(
                &p.clamp(Some(1e-7), Some(1.0)).log(),
                &b[1],
                None,
                2,
                Reduction::Mean,
            );
            l.try_backward(None)?;
            opt.step()?;
            Ok(vec![l])
        })
        .unwrap();
        let compile_s = t0.elapsed().as_secs_f64();
        step.run(&[&x, &y]).unwrap();
        let reps = 3;
        let t1 = std::time::Instant::now();
        for _ in 0..reps {
            step.run(&[&x, &y]).unwrap()[0].try_item().unwrap();
        }
        println!(
            "base {base}: {:.3} s per step (batch 4 of 32^3, {} parameters; compile {compile_s:.1} s)",
            t1.elapsed().as_secs_f64() / reps as f64,
            net.num_parameters()
        );
    }
}
