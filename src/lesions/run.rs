//! `kiln lesions run`: the tutorial's pipeline end to end on one machine: a cohort, training on
//! most of its subjects, inference on the held-out ones, and the lesion metrics of those
//! predictions, printed as a table.
//!
//! The sizes are chosen to finish in minutes on two CPU cores: a narrow U-Net (base 8 instead
//! of the tutorial's 32), lesion-balanced sampling (half the patches hold lesion voxels, so a
//! short training sees enough of them), 20 short epochs; `--quick` shrinks it to a smoke test.
//!
//! Why batch norm, Adam and the Dice term: lesions are about 0.2% of the synthetic brains'
//! voxels, and with the tutorial's plain network, Adadelta (lr 1) or Adam (lr 1e-3, 3e-3) and
//! the clamped cross-entropy, the base-8 network collapsed within the first epoch to
//! "background everywhere" with lesion probabilities below the clamp's 1e-7, where the clamp
//! passes no gradient (validation loss then stays constant). Batch norm keeps the activations
//! in range, and the Dice term rewards lesion voxels however rare they are.

use super::infer::{segment, write_outputs, THRESHOLD};
use super::metrics::{evaluate, Metrics};
use super::patches::{cohort_dirs, load_subject, Subject};
use super::synth;
use super::train::{train, LossKind, TrainConfig};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::Instant;

/// What `kiln lesions run` does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// An existing cohort to use instead of synthesising one.
    pub data: Option<PathBuf>,
    pub subjects: usize,
    pub seed: u64,
    pub quick: bool,
}

/// The training configuration of the end-to-end run.
pub fn run_config(quick: bool, seed: u64) -> TrainConfig {
    TrainConfig {
        base: 8,
        batch_norm: true,
        batch_size: 8,
        epochs: if quick { 2 } else { 20 },
        patches_per_epoch: if quick { 32 } else { 512 },
        val_patches: if quick { 16 } else { 64 },
        lesion_fraction: Some(0.5),
        optimizer: "adam".into(),
        lr: 2e-3,
        loss: LossKind::CrossEntropyDice,
        patience: 5,
        seed,
        ..TrainConfig::default()
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Data {
        path: "lesions run".into(),
        msg: msg.into(),
    }
}

/// Runs the pipeline; returns the per-subject metrics of the held-out subjects.
pub fn run(o: &RunOptions) -> Result<Vec<(String, Metrics)>> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.out).map_err(|e| err(format!("{}: {e}", o.out.display())))?;
    let cohort = match &o.data {
        Some(d) => d.clone(),
        None => {
            let dir = o.out.join("cohort");
            let t = Instant::now();
            let anat = synth::Anatomy::new(synth::Template::load(synth::default_template_dir())?);
            synth::synthesize_cohort(
                &anat,
                &dir,
                &synth::CohortOptions {
                    subjects: o.subjects,
                    seed: o.seed,
                    preview: false,
                    threads: 0,
                },
            )?;
            println!(
                "synthesised {} subjects into {} ({:.0} s)",
                o.subjects,
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            dir
        }
    };
    let dirs = cohort_dirs(&cohort)?;
    if dirs.len() < 4 {
        return Err(err(format!(
            "the cohort in {} has {} subjects; the run needs at least 4 (training, validation, test)",
            cohort.display(),
            dirs.len()
        )));
    }
    // The last quarter (at least one subject) is held out for testing.
    let n_test = (dirs.len() / 4).max(1);
    let (train_dirs, test_dirs) = dirs.split_at(dirs.len() - n_test);
    let subjects: Vec<Subject> = train_dirs
        .iter()
        .map(|d| load_subject(d, true).map(|(s, _)| s))
        .collect::<Result<_>>()?;
    let cfg = run_config(o.quick, o.seed);
    let model = o.out.join("model");
    println!(
        "training on {} subjects (validation {:.0}%), testing on {}: U-Net base {}, batch {}, {} epochs of {} patches",
        subjects.len(),
        cfg.val_fraction * 100.0,
        test_dirs.len(),
        cfg.base,
        cfg.batch_size,
        cfg.epochs,
        cfg.patches_per_epoch
    );
    let outcome = train(&cfg, subjects, &model, false)?;
    println!(
        "best validation loss {:.4} at epoch {} ({:.3} s per step)",
        outcome.best_val_loss, outcome.best_epoch, outcome.step_seconds
    );
    let pred_dir = o.out.join("predictions");
    std::fs::create_dir_all(&pred_dir).map_err(|e| err(format!("{}: {e}", pred_dir.display())))?;
    let mut rows = Vec::new();
    for d in test_dirs {
        let seg = segment(&model, d, THRESHOLD)?;
        let id = seg.subject.id.clone();
        write_outputs(
            &seg,
            &pred_dir.join(format!("{id}.nii.gz")),
            Some(&pred_dir.join(format!("{id}.png"))),
            true,
        )?;
        let pred = seg.probability.mapv(|p| p >= THRESHOLD);
        let spacing = seg.flair.header.pixdim();
        let m = evaluate(seg.subject.label.view(), pred.view(), spacing)?;
        println!("{id}: Dice {:.3}", m.dsc);
        rows.push((id, m));
    }
    println!("{}", super::table::summarize(&rows));
    println!(
        "run in {} ({:.0} s)",
        o.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(rows)
}

/// `kiln lesions run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The run directory: the cohort (unless --data), the model, the predictions.
    #[arg(long)]
    pub out: PathBuf,
    /// Use this cohort instead of synthesising one.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Subjects to synthesise.
    #[arg(long, default_value_t = 12)]
    pub subjects: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A smoke test: 2 short epochs.
    #[arg(long)]
    pub quick: bool,
}

/// The command: runs [`run`] and prints the table.
pub fn cli(a: RunArgs) -> std::result::Result<(), Box<dyn std::error::Error>> {
    run(&RunOptions {
        out: a.out,
        data: a.data,
        subjects: a.subjects,
        seed: a.seed,
        quick: a.quick,
    })?;
    Ok(())
}
