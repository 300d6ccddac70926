//! Checkpoints: safetensors files with PyTorch's names and layouts, written atomically.
//!
//! Round trips are bit-exact; a file written by PyTorch (the reference fixtures are
//! safetensors files from `safetensors.torch.save_file`) loads as a state dict and into the
//! model; a failing write (a real `EFBIG` mid-write, under a file-size limit) and a killed
//! writer leave the previous checkpoint intact; bad files are errors naming the file.

mod common;

use common::fixture_dir;
use kiln::checkpoint::{self, StateDict};
use kiln::nn::{self, Module};
use kiln::{DType, Generator, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A fresh empty directory under the target directory (no extra crates needed).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("checkpoint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t
            .to_vec::<f32>()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => t.to_vec::<f64>().iter().map(|x| x.to_bits()).collect(),
        DType::I64 => t.to_vec::<i64>().iter().map(|&x| x as u64).collect(),
        DType::Bool => t.to_vec::<bool>().iter().map(|&x| x as u64).collect(),
    }
}

fn assert_same(a: &StateDict, b: &StateDict) {
    assert_eq!(
        a.keys().collect::<Vec<_>>().len(),
        b.len(),
        "different numbers of tensors"
    );
    for (k, t) in a.iter() {
        let u = b.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!((t.dtype(), t.shape()), (u.dtype(), u.shape()), "{k}");
        assert_eq!(bits(t), bits(u), "{k} differs");
    }
}

fn special_state() -> StateDict {
    let mut sd = StateDict::new();
    let weird = vec![
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234), // a NaN with a payload
        f32::MIN_POSITIVE / 4.0,     // subnormal
        f32::MAX,
        -1.5,
    ];
    sd.insert("layer.weight", Tensor::from_vec(weird, [2, 4]));
    sd.insert(
        "layer.f64",
        Tensor::from_vec(vec![1e-310f64, -2.5, f64::NAN], [3]),
    );
    sd.insert(
        "counts",
        Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], [2, 2]),
    );
    sd.insert("mask", Tensor::from_vec(vec![true, false, true], [3, 1]));
    sd.insert("bn.num_batches_tracked", Tensor::full([], 7.0, DType::I64));
    sd.insert("empty", Tensor::zeros([0, 3]));
    sd.metadata_mut().insert("epoch".into(), "12".into());
    sd
}

#[test]
fn save_then_load_is_bit_exact_with_metadata() {
    let dir = scratch("roundtrip");
    let path = dir.join("state.safetensors");
    let sd = special_state();
    checkpoint::save(&path, &sd).unwrap();
    let back = checkpoint::load(&path).unwrap();
    assert_same(&sd, &back);
    assert_eq!(back.metadata().get("epoch").map(String::as_str), Some("12"));
    assert_eq!(back.source(), Some(path.display().to_string().as_str()));
    // Overwriting replaces the file; nothing else is left in the directory.
    let mut sd2 = StateDict::new();
    sd2.insert("x", Tensor::ones([2]));
    checkpoint::save(&path, &sd2).unwrap();
    assert_same(&sd2, &checkpoint::load(&path).unwrap());
    assert_eq!(entries(&dir), ["state.safetensors"]);
    // The bytes form agrees with the file.
    let bytes = checkpoint::to_bytes(&sd).unwrap();
    assert_same(
        &sd,
        &checkpoint::from_bytes(&bytes, Path::new("mem")).unwrap(),
    );
}

#[test]
fn a_checkpoint_written_by_pytorch_loads_into_the_model() {
    let path = fixture_dir().join("lenet_mse_sgd.safetensors");
    let sd = checkpoint::load(&path).unwrap();
    assert_eq!(
        sd.metadata().get("op").map(String::as_str),
        Some("training")
    );
    let w = sd.get("param.conv1.weight").unwrap();
    assert_eq!((w.dtype(), w.shape()), (DType::F32, &[6usize, 1, 3, 3][..]));
    let fx = common::Fixture::load(&path).unwrap();
    for (k, t) in sd.iter() {
        assert_eq!(bits(t), bits(&fx.tensors[k]), "{k}");
    }
    // PyTorch's state_dict names and layouts are the model's.
    let net = nn::LeNet::new(&mut Generator::new(0));
    let report = net.load_state_dict(&sd.sub("param"), true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_eq!(
        bits(&net.fc1.weight),
        bits(sd.get("param.fc1.weight").unwrap())
    );
    // Integer tensors (class labels) come through as i64.
    let u = checkpoint::load(fixture_dir().join("unet3d_ce_adadelta.safetensors")).unwrap();
    assert_eq!(u.get("step0.y").unwrap().dtype(), DType::I64);
}

#[test]
fn a_model_round_trips_through_a_checkpoint() {
    let dir = scratch("model");
    let path = dir.join("unet.safetensors");
    let opts = nn::UNet3dOptions {
        batch_norm: true,
        ..Default::default()
    };
    let a = nn::UNet3d::new(1, 2, 2, opts.clone(), &mut Generator::new(1)).unwrap();
    let x = Tensor::randn_with([2, 1, 8, 8, 8], DType::F32, &mut Generator::new(2));
    a.forward(&x); // a training-mode step moves the running statistics
    checkpoint::save(&path, &a.state_dict()).unwrap();
    let mut b = nn::UNet3d::new(1, 2, 2, opts, &mut Generator::new(3)).unwrap();
    b.load_state_dict(&checkpoint::load(&path).unwrap(), true)
        .unwrap();
    assert_same(&a.state_dict(), &b.state_dict());
    let mut a = a;
    a.eval();
    b.eval();
    assert_eq!(bits(&a.forward(&x)), bits(&b.forward(&x)));
}

#[test]
fn a_failed_save_leaves_the_target_and_no_temporary_file() {
    let dir = scratch("fail");
    // The target is a directory: the rename fails after the data was written.
    let target = dir.join("ckpt.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = checkpoint::save(&target, &special_state()).unwrap_err();
    assert!(matches!(e, kiln::Error::Data { .. }));
    assert!(e.to_string().contains("ckpt.safetensors"), "{e}");
    assert!(target.join("keep").exists());
    assert_eq!(entries(&dir), ["ckpt.safetensors"]);
    // A missing directory is an error naming the file, not a panic.
    let e = checkpoint::save(dir.join("no/such/dir/c.safetensors"), &special_state()).unwrap_err();
    assert!(e.to_string().contains("c.safetensors"), "{e}");
}

/// A checkpoint of `n` f32 values all equal to `v`.
fn filled(n: usize, v: f32) -> StateDict {
    let mut sd = StateDict::new();
    sd.insert("w", Tensor::from_vec(vec![v; n], [n]));
    sd
}

/// Under a file-size limit, in a child process: the write fails half-way with EFBIG.
#[test]
fn child_save_under_a_file_size_limit() {
    let Some(dir) = std::env::var_os("KILN_CKPT_CHILD_EFBIG") else {
        return; // only does something when run by the test below
    };
    let path = PathBuf::from(dir).join("ckpt.safetensors");
    let e = checkpoint::save(&path, &filled(1 << 20, 2.0)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, kiln::Error::Data { .. }), "{msg}");
    assert!(msg.contains("ckpt.safetensors"), "{msg}");
    println!("child error: {msg}");
}

#[cfg(unix)]
#[test]
fn a_write_failing_mid_file_keeps_the_old_checkpoint() {
    let dir = scratch("efbig");
    let path = dir.join("ckpt.safetensors");
    let old = filled(1000, 1.0);
    checkpoint::save(&path, &old).unwrap();
    // `ulimit -f 64` caps files at 32 KiB; with SIGXFSZ ignored, the write gets EFBIG.
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_save_under_a_file_size_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KILN_CKPT_CHILD_EFBIG", &dir)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {log}");
    assert!(
        log.contains("child error:") && log.contains("File too large"),
        "{log}"
    );
    assert_same(&old, &checkpoint::load(&path).unwrap());
    assert_eq!(
        entries(&dir),
        ["ckpt.safetensors"],
        "a temporary file was left behind"
    );
}

/// Saves two alternating checkpoints to the same file until killed.
#[test]
fn child_save_in_a_loop() {
    let Some(dir) = std::env::var_os("KILN_CKPT_CHILD_LOOP") else {
        return;
    };
    let path = PathBuf::from(dir).join("ckpt.safetensors");
    let states = [filled(1 << 20, 3.0), filled(1 << 19, 4.0)];
    for i in 0.. {
        checkpoint::save(&path, &states[i % 2]).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn a_writer_killed_mid_save_leaves_a_complete_checkpoint() {
    let dir = scratch("kill");
    let path = dir.join("ckpt.safetensors");
    let candidates = [
        filled(1000, 1.0),
        filled(1 << 20, 3.0),
        filled(1 << 19, 4.0),
    ];
    let is_temp = |n: &String| n.ends_with(".tmp");
    let mut mid_write = 0;
    for attempt in 0..60u64 {
        // Back to the old checkpoint, then let a child overwrite it in a loop.
        checkpoint::save(&path, &candidates[0]).unwrap();
        let old_len = std::fs::metadata(&path).unwrap().len();
        let temps_before = entries(&dir).iter().filter(|n| is_temp(n)).count();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_save_in_a_loop", "--test-threads=1"])
            .env("KILN_CKPT_CHILD_LOOP", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child has replaced the file at least once, then kill it at a varying
        // moment of its next saves.
        let start = std::time::Instant::now();
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == old_len {
            assert!(start.elapsed().as_secs() < 60, "the child never saved");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let delay_us = [0u64, 300, 700, 1500, 3000, 6000][attempt as usize % 6];
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        child.kill().unwrap(); // SIGKILL: no cleanup runs
        child.wait().unwrap();
        let got = checkpoint::load(&path).unwrap();
        assert!(
            candidates.iter().any(|c| {
                c.get("w").unwrap().shape() == got.get("w").unwrap().shape()
                    && bits(c.get("w").unwrap()) == bits(got.get("w").unwrap())
            }),
            "after a kill {delay_us} us into the saves the checkpoint is neither the old nor a new one"
        );
        // A kill during a write leaves that write's temporary file (nothing runs on SIGKILL).
        if entries(&dir).iter().filter(|n| is_temp(n)).count() > temps_before {
            mid_write += 1;
            if mid_write == 3 {
                break;
            }
        }
    }
    println!("kills in the middle of a write: {mid_write}");
    assert!(mid_write > 0, "no kill landed in the middle of a write");
}

#[test]
fn missing_truncated_and_corrupt_files_are_errors_naming_the_file() {
    let dir = scratch("corrupt");
    let missing = dir.join("missing.safetensors");
    let e = checkpoint::load(&missing).unwrap_err();
    assert!(matches!(e, kiln::Error::Data { .. }));
    assert!(e.to_string().contains("missing.safetensors"), "{e}");

    let good = checkpoint::to_bytes(&special_state()).unwrap();
    let path = dir.join("bad.safetensors");
    // Every truncation, including the empty file.
    for n in 0..good.len() {
        std::fs::write(&path, &good[..n]).unwrap();
        let e = checkpoint::load(&path).unwrap_err();
        assert!(
            e.to_string().contains("bad.safetensors"),
            "truncated at {n}: {e}"
        );
    }
    // Trailing garbage.
    let mut long = good.clone();
    long.extend_from_slice(b"junk");
    std::fs::write(&path, &long).unwrap();
    assert!(checkpoint::load(&path).is_err());
    // A header length far beyond the file.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &huge).unwrap();
    assert!(checkpoint::load(&path)
        .unwrap_err()
        .to_string()
        .contains("bad.safetensors"));
    // Every single-byte corruption of the header gives a value or an error, never a panic.
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for i in 0..header_end {
        for flip in [0x01u8, 0x20, 0x80] {
            let mut b = good.clone();
            b[i] ^= flip;
            let _ = checkpoint::from_bytes(&b, Path::new("flipped"));
        }
    }
    // A well-formed file with a dtype kiln does not hold.
    let half = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &half).unwrap();
    let bytes = safetensors::serialize([("half.weight", view)], None).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let msg = checkpoint::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("bad.safetensors") && msg.contains("half.weight") && msg.contains("F16"),
        "{msg}"
    );
}

#[test]
fn a_mismatched_checkpoint_names_the_file_the_tensor_and_both_shapes() {
    let dir = scratch("mismatch");
    let path = dir.join("other.safetensors");
    let mut sd = nn::LeNet::new(&mut Generator::new(0)).state_dict();
    sd.insert("fc3.weight", Tensor::zeros([5, 84]));
    checkpoint::save(&path, &sd).unwrap();
    let net = nn::LeNet::new(&mut Generator::new(1));
    let msg = net
        .load_state_dict(&checkpoint::load(&path).unwrap(), true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("other.safetensors")
            && msg.contains("fc3.weight")
            && msg.contains("[5, 84]")
            && msg.contains("[10, 84]"),
        "{msg}"
    );
}
