//! `kiln lesions train --data DIR --out RUN`: trains the tutorial's 3-D patch U-Net on a
//! cohort (see `crate::lesions::train` for what RUN holds).

use crate::lesions::patches::load_cohort;
use crate::lesions::train::{read_run_config, train, LossKind, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The cohort: DIR/<id>/{FLAIR_brain,T1_brain,wmh,brainmask}.nii.gz.
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory (config.json, best/last checkpoints, history.csv, curves.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last finished epoch (its config.json is used;
    /// --epochs may raise the number of epochs, the other options are ignored).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// U-Net width b (channels b, 2b, 4b, 8b); the tutorial's is 32.
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 512)]
    pub patches_per_epoch: usize,
    #[arg(long, default_value_t = 128)]
    pub val_patches: usize,
    /// Patch side (a multiple of 8).
    #[arg(long, default_value_t = 32)]
    pub patch: usize,
    /// Grid step of patch positions.
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Lesion-balanced sampling: this fraction of each epoch's patches hold lesion voxels
    /// (default: uniform over the grid, as the tutorial).
    #[arg(long)]
    pub lesion_fraction: Option<f64>,
    /// Fraction of the subjects held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// adadelta (the tutorial's) or adam.
    #[arg(long, default_value = "adadelta")]
    pub optimizer: String,
    /// Learning rate (default 1.0 for Adadelta, 1e-3 for Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// ce (the tutorial's clamped cross-entropy), wce (class-weighted) or dice (ce + soft Dice).
    #[arg(long, default_value = "ce")]
    pub loss: String,
    /// The lesion class weight of --loss wce.
    #[arg(long, default_value_t = 10.0)]
    pub lesion_weight: f64,
    /// Stop after this many epochs without a lower validation loss (0: never).
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub batch_norm: bool,
    /// Dropout probability in the bottleneck and decoder (training then runs eagerly).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    #[arg(long)]
    pub residual: bool,
    #[arg(long)]
    pub deep_supervision: bool,
    /// The plain zero_grad/backward/step loop instead of one compiled step.
    #[arg(long)]
    pub eager: bool,
}

impl TrainArgs {
    pub fn config(&self) -> crate::Result<TrainConfig> {
        let lr = self
            .lr
            .unwrap_or(if self.optimizer == "adam" { 1e-3 } else { 1.0 });
        let cfg = TrainConfig {
            base: self.base,
            batch_norm: self.batch_norm,
            dropout: self.dropout,
            residual: self.residual,
            deep_supervision: self.deep_supervision,
            patch: self.patch,
            stride: self.stride,
            batch_size: self.batch_size,
            epochs: self.epochs,
            patches_per_epoch: self.patches_per_epoch,
            val_patches: self.val_patches,
            lesion_fraction: self.lesion_fraction,
            val_fraction: self.val_fraction,
            optimizer: self.optimizer.clone(),
            lr,
            loss: LossKind::parse(&self.loss, self.lesion_weight)?,
            patience: self.patience,
            seed: self.seed,
            eager: self.eager,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = if args.resume {
        let (mut c, _) = read_run_config(&args.out)?;
        c.epochs = c.epochs.max(args.epochs);
        c
    } else {
        args.config()?
    };
    let subjects = load_cohort(&args.data)?;
    println!(
        "{} subjects from {}; U-Net base {}, patches {}^3 on a {}-grid, batch {}, {} epochs, {} {}",
        subjects.len(),
        args.data.display(),
        cfg.base,
        cfg.patch,
        cfg.stride,
        cfg.batch_size,
        cfg.epochs,
        cfg.optimizer,
        cfg.lr
    );
    let o = train(&cfg, subjects, &args.out, args.resume)?;
    println!(
        "best validation loss {:.4} at epoch {}; {:.3} s per training step; run in {}",
        o.best_val_loss,
        o.best_epoch,
        o.step_seconds,
        args.out.display()
    );
    Ok(())
}
