//! `kiln lesions synth`: a cohort derived from the MNI152 template. Determinism, the layout and
//! geometry of the files, and the properties the tutorial relies on (lesions inside the brain
//! and mostly in white matter, bright on FLAIR and dark on T1, labels 0/1/2).

use kiln::lesions::synth::{self, Anatomy, Template};
use kiln::nifti;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn synth_cli(out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["lesions", "synth", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn anatomy() -> &'static Anatomy {
    static A: OnceLock<Anatomy> = OnceLock::new();
    A.get_or_init(|| Anatomy::new(Template::load(synth::default_template_dir()).unwrap()))
}

const FILES: [&str; 4] = [synth::FLAIR, synth::T1, synth::WMH, synth::BRAINMASK];

#[test]
fn one_seed_gives_identical_files_whatever_the_threads_and_seeds_differ() {
    let dir = scratch("determinism");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    synth_cli(&a, &["--subjects", "2", "--seed", "7", "--threads", "1"]);
    synth_cli(&b, &["--subjects", "2", "--seed", "7", "--threads", "2"]);
    synth_cli(&c, &["--subjects", "2", "--seed", "8", "--no-preview"]);
    for id in ["sub-000", "sub-001"] {
        for f in FILES.iter().chain(&["preview.png"]) {
            let x = std::fs::read(a.join(id).join(f)).unwrap();
            let y = std::fs::read(b.join(id).join(f)).unwrap();
            assert!(x == y, "{id}/{f} differs between two runs with one seed");
        }
        assert!(!c.join(id).join("preview.png").exists());
        for f in [synth::FLAIR, synth::WMH] {
            let x = nifti::read(a.join(id).join(f)).unwrap();
            let z = nifti::read(c.join(id).join(f)).unwrap();
            assert!(
                x.data != z.data,
                "{id}/{f}: seeds 7 and 8 gave the same image"
            );
        }
    }
    // Subjects of one cohort differ from each other too.
    let s0 = nifti::read(a.join("sub-000").join(synth::FLAIR)).unwrap();
    let s1 = nifti::read(a.join("sub-001").join(synth::FLAIR)).unwrap();
    assert!(s0.data != s1.data);
    assert_eq!(
        std::fs::read(a.join("subjects.tsv")).unwrap(),
        std::fs::read(b.join("subjects.tsv")).unwrap()
    );

    // Layout and geometry: the four files of a subject share shape and affine, which are the
    // template's; the masks are uint8, the images float32.
    let tpl = Template::load(synth::default_template_dir()).unwrap();
    for id in ["sub-000", "sub-001"] {
        let vols: Vec<nifti::Volume> = FILES
            .iter()
            .map(|f| nifti::read(a.join(id).join(f)).unwrap())
            .collect();
        for v in &vols {
            assert_eq!(v.shape(), &tpl.shape()[..]);
            assert_eq!(v.header.affine(), tpl.header.affine());
            assert_eq!(v.header.pixdim(), [2.0, 2.0, 2.0]);
            assert_eq!(v.header.sform_code, 2);
        }
        assert_eq!(vols[0].header.datatype(), nifti::DataType::F32);
        assert_eq!(vols[2].header.datatype(), nifti::DataType::U8);
        assert_eq!(vols[3].header.datatype(), nifti::DataType::U8);
    }
}

#[test]
fn lesions_are_in_the_brain_mostly_in_white_matter_bright_on_flair_dark_on_t1() {
    let anat = anatomy();
    let mut volumes = Vec::new();
    for i in 0..4 {
        let s = synth::synthesize(anat, 3, i).unwrap();
        let (f, t, lab, m) = (&s.flair.data, &s.t1.data, &s.wmh.data, &s.brainmask.data);
        assert!(
            lab.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0),
            "labels in {{0, 1, 2}}"
        );
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
        let n_les = lab.iter().filter(|&&v| v == 1.0).count();
        assert!(n_les > 0, "subject {i} has no lesion voxel");
        volumes.push(n_les);
        // Every labelled voxel is inside the brain mask; images are 0 outside it.
        for ((&l, &mm), &fv) in lab.iter().zip(m.iter()).zip(f.iter()) {
            assert!(l == 0.0 || mm == 1.0);
            assert!(mm == 1.0 || fv == 0.0);
        }
        // Mostly in white matter (the subject's deformed WM map).
        let in_wm = lab
            .iter()
            .zip(s.wm.iter())
            .filter(|(&l, &w)| l == 1.0 && w > 0.5)
            .count();
        assert!(
            in_wm as f64 >= 0.8 * n_les as f64,
            "subject {i}: {in_wm} of {n_les} lesion voxels in WM"
        );
        // Contrast: lesion vs normal-appearing white matter.
        let mean = |img: &ndarray::ArrayD<f32>, sel: &dyn Fn(f32, f32) -> bool| {
            let (mut sum, mut n) = (0.0f64, 0usize);
            for ((&v, &l), &w) in img.iter().zip(lab.iter()).zip(s.wm.iter()) {
                if sel(l, w) {
                    sum += v as f64;
                    n += 1;
                }
            }
            sum / n.max(1) as f64
        };
        let les = |l: f32, _w: f32| l == 1.0;
        let wm = |l: f32, w: f32| l == 0.0 && w > 0.9;
        let (fl, fw) = (mean(f, &les), mean(f, &wm));
        let (tl, tw) = (mean(t, &les), mean(t, &wm));
        assert!(
            fl > 1.2 * fw,
            "subject {i}: FLAIR lesion mean {fl} vs WM {fw}"
        );
        assert!(tl < 0.9 * tw, "subject {i}: T1 lesion mean {tl} vs WM {tw}");
        // Label 2 is present, and never on a lesion.
        assert!(lab.iter().any(|&v| v == 2.0) || s.other_regions == 0);
    }
    // Lesion load varies between subjects.
    let (lo, hi) = (volumes.iter().min().unwrap(), volumes.iter().max().unwrap());
    assert!(*hi >= 2 * *lo, "lesion volumes {volumes:?} barely vary");
}

/// The shipped 2 mm template is what the reduction of the 1 mm originals gives (when
/// ../shared is present), and `--template` accepts either.
#[test]
fn shipped_template_reproduces_from_the_originals() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mni152");
    let shipped = Template::load(synth::default_template_dir()).unwrap();
    assert_eq!(shipped.shape(), [83, 101, 88]);
    if !shared.join(synth::ORIGINAL_FILES[0]).exists() {
        eprintln!("skipped: {} not found", shared.display());
        return;
    }
    let made = Template::load(&shared).unwrap();
    assert_eq!(made.header.affine(), shipped.header.affine());
    assert_eq!(made.t1, shipped.t1);
    assert!(made
        .gm
        .iter()
        .zip(shipped.gm.iter())
        .all(|(a, b)| (a * 255.0 - b * 255.0).abs() < 1e-3));
    assert!(made
        .wm
        .iter()
        .zip(shipped.wm.iter())
        .all(|(a, b)| (a * 255.0 - b * 255.0).abs() < 1e-3));
}

#[test]
fn a_missing_template_is_an_error_naming_the_file() {
    let dir = scratch("missing");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["lesions", "synth", "--subjects", "1", "--out"])
        .arg(dir.join("out"))
        .arg("--template")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(synth::TEMPLATE_FILES[0]) && e.contains("missing"),
        "{e}"
    );
}
