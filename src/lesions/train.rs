//! Training the tutorial's 3-D patch U-Net: the loss, the compiled training step, validation,
//! checkpoints (best by validation loss, last with the optimiser state for `--resume`), early
//! stopping, `history.csv` and `curves.png`.
//!
//! The RUN directory holds:
//! - `config.json`: the [`TrainConfig`], the training/validation split, the epochs done, the
//!   best validation loss and its epoch, the epochs without improvement;
//! - `best.safetensors`: the model of the epoch with the lowest validation loss;
//! - `last.safetensors` + `optimizer.safetensors`: the model and the optimiser state after the
//!   last finished epoch, so that a resumed run continues exactly as an uninterrupted one
//!   (patch sampling and shuffling are keyed by `(seed, epoch)`, not by a running stream);
//! - `history.csv` and `curves.png`.

use super::patches::{PatchDataset, PatchIndex, Subject, IGNORE_LABEL, LESION_LABEL};
use crate::data::DataLoader;
use crate::error::{Error, Result};
use crate::functional::{self as F, Reduction};
use crate::nn::models::{UNet3d, UNet3dOptions};
use crate::nn::Module;
use crate::nn::StateDict;
use crate::optim::{Adadelta, Adam, Optimizer};
use crate::{DType, Generator, Tensor};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The loss on the network's probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// The tutorial's: `cross_entropy(log(clamp(p, 1e-7, 1)), y, ignore_index = 2)`. Since
    /// `sum_c p_c = 1`, `log_softmax(log p) = log p`, so this is the mean over non-ignored
    /// voxels of `-log p_y`, with `p` clamped away from 0.
    CrossEntropy,
    /// The cross-entropy above with class weights `[1, w]`: PyTorch's weighted mean
    /// `sum_v w_{y_v} (-log p_{y_v}) / sum_v w_{y_v}`, offsetting the rarity of lesion voxels.
    WeightedCrossEntropy(f64),
    /// Cross-entropy plus the soft Dice loss of the lesion channel, `1 - (2 sum p t + 1) /
    /// (sum p + sum t + 1)` per patch, ignored voxels removed from both `p` and `t`.
    CrossEntropyDice,
}

impl LossKind {
    pub fn parse(name: &str, lesion_weight: f64) -> Result<LossKind> {
        match name {
            "ce" => Ok(LossKind::CrossEntropy),
            "wce" => Ok(LossKind::WeightedCrossEntropy(lesion_weight)),
            "dice" => Ok(LossKind::CrossEntropyDice),
            _ => Err(cfg_err(format!(
                "unknown loss {name:?} (expected ce, wce or dice)"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "ce",
            LossKind::WeightedCrossEntropy(_) => "wce",
            LossKind::CrossEntropyDice => "dice",
        }
    }
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::Data {
        path: "lesions::train".into(),
        msg: msg.into(),
    }
}

/// The loss of probabilities `p` `[B, 2, D, H, W]` against labels `y` `[B, D, H, W]` (i64; 2 =
/// ignored).
pub fn loss(p: &Tensor, y: &Tensor, kind: LossKind) -> Tensor {
    let logp = p.clamp(Some(1e-7), Some(1.0)).log();
    let ignore = IGNORE_LABEL as i64;
    match kind {
        LossKind::CrossEntropy => F::cross_entropy(&logp, y, None, ignore, Reduction::Mean),
        LossKind::WeightedCrossEntropy(w) => {
            let weight = Tensor::from_vec(vec![1.0f32, w as f32], [2]).to_dtype(p.dtype());
            F::cross_entropy(&logp, y, Some(&weight), ignore, Reduction::Mean)
        }
        LossKind::CrossEntropyDice => {
            let ce = F::cross_entropy(&logp, y, None, ignore, Reduction::Mean);
            let valid = y.ne(ignore as f64).to_dtype(p.dtype()).unsqueeze(1);
            let lesion = y.eq(LESION_LABEL as f64).to_dtype(p.dtype()).unsqueeze(1);
            let p1 = p.slice(1, 1, 2, 1).mul(&valid);
            let dice = F::soft_dice_loss(&p1, &lesion.mul(&valid), 1.0, Reduction::Mean);
            ce.add(&dice)
        }
    }
}

/// `(correct, counted)` voxels of the argmax prediction, ignored voxels not counted, as 0-d
/// f32 tensors (outputs of a compiled step).
fn accuracy_counts(p: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let valid = y.ne(IGNORE_LABEL as f64).to_dtype(DType::F32);
    let hit = p.argmax(1, false).eq(y).to_dtype(DType::F32).mul(&valid);
    (hit.sum_all(), valid.sum_all())
}

/// Everything that defines a run (written to `config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// U-Net width `b` (channels `b, 2b, 4b, 8b`).
    pub base: usize,
    pub batch_norm: bool,
    pub dropout: f64,
    pub residual: bool,
    pub deep_supervision: bool,
    /// Patch side (a multiple of 8).
    pub patch: usize,
    /// Grid step of patch positions.
    pub stride: usize,
    pub batch_size: usize,
    pub epochs: usize,
    /// Patches drawn per epoch (rounded down to whole batches).
    pub patches_per_epoch: usize,
    /// Validation patches per epoch (a fixed set, rounded down to whole batches, at least one).
    pub val_patches: usize,
    /// Lesion-balanced sampling: the fraction of patches holding lesion voxels; `None` samples
    /// the grid uniformly.
    pub lesion_fraction: Option<f64>,
    /// Fraction of subjects held out for validation.
    pub val_fraction: f64,
    /// `adadelta` (the tutorial's) or `adam`.
    pub optimizer: String,
    pub lr: f64,
    pub loss: LossKind,
    /// Epochs without a lower validation loss before stopping (0: never stop early).
    pub patience: usize,
    pub seed: u64,
    /// Run the plain zero_grad/backward/step loop instead of one compiled step.
    pub eager: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            base: 32,
            batch_norm: false,
            dropout: 0.0,
            residual: false,
            deep_supervision: false,
            patch: 32,
            stride: 16,
            batch_size: 16,
            epochs: 50,
            patches_per_epoch: 512,
            val_patches: 128,
            lesion_fraction: None,
            val_fraction: 0.2,
            optimizer: "adadelta".into(),
            lr: 1.0,
            loss: LossKind::CrossEntropy,
            patience: 10,
            seed: 0,
            eager: false,
        }
    }
}

impl TrainConfig {
    pub fn model_options(&self) -> UNet3dOptions {
        UNet3dOptions {
            batch_norm: self.batch_norm,
            dropout: self.dropout,
            residual: self.residual,
            deep_supervision: self.deep_supervision,
            ..UNet3dOptions::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch == 0 || !self.patch.is_multiple_of(8) {
            return Err(cfg_err(format!(
                "the patch size must be a positive multiple of 8, got {}",
                self.patch
            )));
        }
        if self.stride == 0 || self.base == 0 || self.batch_size == 0 || self.epochs == 0 {
            return Err(cfg_err(
                "stride, base, batch size and epochs must be positive",
            ));
        }
        if self.patches_per_epoch < self.batch_size {
            return Err(cfg_err(format!(
                "patches per epoch ({}) must be at least the batch size ({})",
                self.patches_per_epoch, self.batch_size
            )));
        }
        if !matches!(self.optimizer.as_str(), "adadelta" | "adam") {
            return Err(cfg_err(format!(
                "unknown optimizer {:?} (expected adadelta or adam)",
                self.optimizer
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(cfg_err("dropout must be in [0, 1)"));
        }
        if let Some(f) = self.lesion_fraction {
            if !(0.0..=1.0).contains(&f) {
                return Err(cfg_err("the lesion fraction must be in [0, 1]"));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        let w = match self.loss {
            LossKind::WeightedCrossEntropy(w) => w,
            _ => 1.0,
        };
        json!({
            "base": self.base, "batch_norm": self.batch_norm, "dropout": self.dropout,
            "residual": self.residual, "deep_supervision": self.deep_supervision,
            "patch": self.patch, "stride": self.stride, "batch_size": self.batch_size,
            "epochs": self.epochs, "patches_per_epoch": self.patches_per_epoch,
            "val_patches": self.val_patches, "lesion_fraction": self.lesion_fraction,
            "val_fraction": self.val_fraction, "optimizer": self.optimizer, "lr": self.lr,
            "loss": self.loss.name(), "lesion_weight": w, "patience": self.patience,
            "seed": self.seed, "eager": self.eager,
            "in_channels": 2, "out_channels": 2,
            "normalisation": "z-score per channel inside the brain mask",
            "channels": ["FLAIR_brain", "T1_brain"],
        })
    }

    pub fn from_json(v: &Value) -> Result<TrainConfig> {
        let bad = |k: &str| cfg_err(format!("config.json: missing or invalid `{k}`"));
        let u = |k: &str| v[k].as_u64().map(|x| x as usize).ok_or_else(|| bad(k));
        let f = |k: &str| v[k].as_f64().ok_or_else(|| bad(k));
        let b = |k: &str| v[k].as_bool().ok_or_else(|| bad(k));
        let c = TrainConfig {
            base: u("base")?,
            batch_norm: b("batch_norm")?,
            dropout: f("dropout")?,
            residual: b("residual")?,
            deep_supervision: b("deep_supervision")?,
            patch: u("patch")?,
            stride: u("stride")?,
            batch_size: u("batch_size")?,
            epochs: u("epochs")?,
            patches_per_epoch: u("patches_per_epoch")?,
            val_patches: u("val_patches")?,
            lesion_fraction: v["lesion_fraction"].as_f64(),
            val_fraction: f("val_fraction")?,
            optimizer: v["optimizer"]
                .as_str()
                .ok_or_else(|| bad("optimizer"))?
                .to_string(),
            lr: f("lr")?,
            loss: LossKind::parse(
                v["loss"].as_str().ok_or_else(|| bad("loss"))?,
                f("lesion_weight")?,
            )?,
            patience: u("patience")?,
            seed: v["seed"].as_u64().ok_or_else(|| bad("seed"))?,
            eager: b("eager")?,
        };
        c.validate()?;
        Ok(c)
    }

    /// The U-Net this configuration describes, initialised from the seed.
    pub fn build_model(&self) -> Result<UNet3d> {
        UNet3d::new(
            2,
            2,
            self.base,
            self.model_options(),
            &mut Generator::new(self.seed),
        )
    }
}

/// One line of `history.csv`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub seconds: f64,
}

/// What [`train`] returns.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    /// Mean seconds per training step over this call's epochs.
    pub step_seconds: f64,
}

/// The optimisers the tutorial's training can use.
enum Opt {
    Adadelta(Adadelta),
    Adam(Adam),
}

impl Opt {
    fn new(cfg: &TrainConfig, params: Vec<Tensor>) -> Opt {
        if cfg.optimizer == "adam" {
            Opt::Adam(Adam::new(params).lr(cfg.lr))
        } else {
            Opt::Adadelta(Adadelta::new(params).lr(cfg.lr))
        }
    }

    fn dyn_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            Opt::Adadelta(o) => o,
            Opt::Adam(o) => o,
        }
    }

    fn state(&self, p: &Tensor) -> Option<Vec<(&'static str, Tensor)>> {
        match self {
            Opt::Adadelta(o) => o.state(p),
            Opt::Adam(o) => o.state(p),
        }
    }
}

/// The optimiser state as a state dict: `{param}.{buffer}` (and `{param}.step`).
fn optimizer_state(net: &UNet3d, opt: &Opt) -> StateDict {
    let mut sd = StateDict::new();
    for (name, p) in net.named_parameters() {
        if let Some(st) = opt.state(&p) {
            for (b, t) in st {
                sd.insert(format!("{name}.{b}"), t);
            }
        }
    }
    sd
}

/// Restores [`optimizer_state`]: one update with zero gradients creates the state tensors (it
/// changes no parameter: every rule's update is 0 for a zero gradient and zero state without
/// weight decay), then the saved values are written into them.
fn restore_optimizer(net: &UNet3d, opt: &mut Opt, saved: &StateDict) -> Result<()> {
    let params = net.named_parameters();
    for (_, p) in &params {
        p.set_grad(Some(p.zeros_like()));
    }
    opt.dyn_mut().step()?;
    opt.dyn_mut().zero_grad();
    for (name, p) in &params {
        let st = opt
            .state(p)
            .ok_or_else(|| cfg_err(format!("no optimiser state for {name}")))?;
        for (b, t) in st {
            let key = format!("{name}.{b}");
            let v = saved
                .get(&key)
                .ok_or_else(|| cfg_err(format!("optimizer.safetensors lacks {key}")))?;
            crate::assign(&[(&t, v)])?;
        }
    }
    Ok(())
}

/// SplitMix64's finaliser: keys the per-epoch generators by `(seed, epoch, stream)`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The full loss of a batch, with the auxiliary heads' losses (weights 1/2 and 1/4, labels
/// subsampled by 2 and 4) under deep supervision; also the full-resolution probabilities.
fn batch_loss(net: &UNet3d, x: &Tensor, y: &Tensor, kind: LossKind) -> Result<(Tensor, Tensor)> {
    let outs = net.forward_deep(x)?;
    let mut l = loss(&outs[0], y, kind);
    for (k, (w, step)) in [(0.5, 2usize), (0.25, 4)].into_iter().enumerate() {
        if let Some(p) = outs.get(k + 1) {
            let mut ys = y.clone();
            for axis in 1..4 {
                let n = ys.shape()[axis] as isize;
                ys = ys.slice(axis as isize, 0, n, step);
            }
            l = l.add(&loss(p, &ys, kind).mul(w));
        }
    }
    Ok((l, outs[0].clone()))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Reads `config.json` of a run.
pub fn read_run_config(run: &Path) -> Result<(TrainConfig, Value)> {
    let p = run.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| io_err(&p, e))?;
    Ok((TrainConfig::from_json(&v["train"])?, v))
}

/// Mean loss and accuracy over `batches` with the network in evaluation mode.
fn evaluate(
    net: &mut UNet3d,
    cfg: &TrainConfig,
    loader: &mut DataLoader<PatchDataset>,
    step: &mut Option<crate::compile::CompiledStep>,
) -> Result<(f64, f64)> {
    net.eval();
    let _g = crate::NoGradGuard::new();
    let (mut ls, mut n, mut hit, mut cnt) = (0.0, 0usize, 0.0, 0.0);
    for batch in loader.iter() {
        let (x, y) = batch?;
        let out = if cfg.eager {
            let (l, p) = batch_loss(net, &x, &y, cfg.loss)?;
            let (h, c) = accuracy_counts(&p, &y);
            vec![l, h, c]
        } else {
            if step.is_none() {
                let kind = cfg.loss;
                let net_ref = &*net;
                *step = Some(crate::compile::compile(&[&x, &y], |b| {
                    let (l, p) = batch_loss(net_ref, &b[0], &b[1], kind)?;
                    let (h, c) = accuracy_counts(&p, &b[1]);
                    Ok(vec![l, h, c])
                })?);
            }
            step.as_ref().expect("compiled above").run(&[&x, &y])?
        };
        ls += out[0].try_item()?;
        hit += out[1].try_item()?;
        cnt += out[2].try_item()?;
        n += 1;
    }
    net.train();
    Ok((
        ls / n.max(1) as f64,
        if cnt > 0.0 { hit / cnt } else { 0.0 },
    ))
}

/// Trains on `subjects` (split into training and validation by `cfg`), writing the run to
/// `out`. With `resume`, continues the run in `out` from its last finished epoch (its
/// `config.json` must describe the same configuration, except `epochs`, which may grow).
pub fn train(
    cfg: &TrainConfig,
    subjects: Vec<Subject>,
    out: &Path,
    resume: bool,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if subjects.len() < 2 {
        return Err(cfg_err(format!(
            "training needs at least 2 subjects (one for validation), got {}",
            subjects.len()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let (tr, va) = super::patches::split_indices(subjects.len(), cfg.val_fraction, cfg.seed);
    let ids =
        |ix: &[usize]| -> Vec<String> { ix.iter().map(|&i| subjects[i].id.clone()).collect() };
    let (train_ids, val_ids) = (ids(&tr), ids(&va));
    let all: Vec<Option<Subject>> = subjects.into_iter().map(Some).collect();
    let mut all = all;
    let take = |ix: &[usize], all: &mut Vec<Option<Subject>>| -> Vec<Subject> {
        ix.iter().filter_map(|&i| all[i].take()).collect()
    };
    let train_s = Arc::new(take(&tr, &mut all));
    let val_s = Arc::new(take(&va, &mut all));
    let train_index = PatchIndex::new(&train_s, cfg.patch, cfg.stride)?;
    let val_index = PatchIndex::new(&val_s, cfg.patch, cfg.stride)?;

    let mut net = cfg.build_model()?;
    let mut opt = Opt::new(cfg, net.parameters());
    let mut history: Vec<EpochRecord> = Vec::new();
    let (mut best_loss, mut best_epoch, mut bad_epochs, mut start) = (f64::INFINITY, 0, 0, 0);
    if resume {
        let (old, v) = read_run_config(out)?;
        let same = TrainConfig {
            epochs: cfg.epochs,
            ..old.clone()
        };
        if same != *cfg {
            return Err(cfg_err(format!(
                "--resume: {} was trained with a different configuration",
                out.display()
            )));
        }
        start = v["epochs_done"].as_u64().unwrap_or(0) as usize;
        best_loss = v["best_val_loss"].as_f64().unwrap_or(f64::INFINITY);
        best_epoch = v["best_epoch"].as_u64().unwrap_or(0) as usize;
        bad_epochs = v["bad_epochs"].as_u64().unwrap_or(0) as usize;
        history = read_history(&out.join("history.csv"))?;
        history.truncate(start);
        if start > 0 {
            restore_optimizer(
                &net,
                &mut opt,
                &crate::checkpoint::load(out.join("optimizer.safetensors"))?,
            )?;
            net.load_state_dict(
                &crate::checkpoint::load(out.join("last.safetensors"))?,
                true,
            )?;
        }
        log::info!("resuming {} after epoch {start}", out.display());
    }
    if cfg.dropout > 0.0 && !cfg.eager {
        log::warn!("dropout in training mode cannot be compiled yet: using the eager loop");
        eprintln!("note: dropout is on, so training runs the eager loop (no compiled step)");
    }
    let eager = cfg.eager || cfg.dropout > 0.0;

    // The validation set: a fixed draw of whole batches.
    let n_val = (cfg.val_patches / cfg.batch_size).max(1) * cfg.batch_size;
    let val_items = val_index.sample(n_val, None, &mut Generator::new(mix(cfg.seed ^ 0x5a17)));
    let mut val_loader = DataLoader::new(
        PatchDataset {
            subjects: val_s.clone(),
            items: val_items,
            patch: cfg.patch,
        },
        cfg.batch_size,
    )?;
    let n_train = (cfg.patches_per_epoch / cfg.batch_size) * cfg.batch_size;
    let mut step: Option<crate::compile::CompiledStep> = None;
    let mut eval_step: Option<crate::compile::CompiledStep> = None;
    let (mut step_time, mut steps_done) = (0.0, 0usize);
    net.train();
    for epoch in start..cfg.epochs {
        if cfg.patience > 0 && bad_epochs >= cfg.patience {
            break;
        }
        let t0 = Instant::now();
        let mut g = Generator::new(mix(cfg.seed ^ mix(epoch as u64)));
        let items = train_index.sample(n_train, cfg.lesion_fraction, &mut g);
        let mut loader = DataLoader::new(
            PatchDataset {
                subjects: train_s.clone(),
                items,
                patch: cfg.patch,
            },
            cfg.batch_size,
        )?
        .shuffle(mix(cfg.seed ^ mix(epoch as u64 ^ 0xb47c)))
        .drop_last(true);
        let bar = progress(loader.len() as u64, epoch, cfg.epochs);
        let (mut ls, mut hit, mut cnt, mut nb) = (0.0, 0.0, 0.0, 0usize);
        for batch in loader.iter() {
            let (x, y) = batch?;
            let ts = Instant::now();
            let out = if eager {
                opt.dyn_mut().zero_grad();
                let (l, p) = batch_loss(&net, &x, &y, cfg.loss)?;
                l.try_backward(None)?;
                opt.dyn_mut().step()?;
                let (h, c) = crate::no_grad(|| accuracy_counts(&p.detach(), &y));
                vec![l, h, c]
            } else {
                if step.is_none() {
                    // Traced once: forward, loss, backward and the optimiser's update become
                    // one program, replayed for every batch.
                    let kind = cfg.loss;
                    let (net_ref, opt_ref) = (&net, &mut opt);
                    step = Some(crate::compile::compile(&[&x, &y], |b| {
                        opt_ref.dyn_mut().zero_grad();
                        let (l, p) = batch_loss(net_ref, &b[0], &b[1], kind)?;
                        l.try_backward(None)?;
                        opt_ref.dyn_mut().step()?;
                        let (h, c) = accuracy_counts(&p.detach(), &b[1]);
                        Ok(vec![l, h, c])
                    })?);
                }
                step.as_ref().expect("compiled above").run(&[&x, &y])?
            };
            let l = out[0].try_item()?;
            step_time += ts.elapsed().as_secs_f64();
            steps_done += 1;
            if !l.is_finite() {
                return Err(cfg_err(format!(
                    "the loss diverged to {l} in epoch {}",
                    epoch + 1
                )));
            }
            ls += l;
            hit += out[1].try_item()?;
            cnt += out[2].try_item()?;
            nb += 1;
            bar.set_message(format!("loss {l:.4}"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let (vl, vacc) = evaluate(&mut net, cfg, &mut val_loader, &mut eval_step)?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: ls / nb.max(1) as f64,
            train_acc: if cnt > 0.0 { hit / cnt } else { 0.0 },
            val_loss: vl,
            val_acc: vacc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        history.push(rec);
        let improved = vl < best_loss;
        if improved {
            best_loss = vl;
            best_epoch = epoch + 1;
            bad_epochs = 0;
        } else {
            bad_epochs += 1;
        }
        // Checkpoints first, `config.json` (which counts the epochs done) last. Each file is
        // replaced atomically; a run killed between the writes has a config one epoch behind
        // its checkpoints, and resuming it repeats that epoch from the newer weights, which is
        // safe but not bit-exact.
        let mut sd = net.state_dict();
        let meta = sd.metadata_mut();
        meta.insert("model".into(), "unet3d".into());
        meta.insert("epoch".into(), (epoch + 1).to_string());
        if improved {
            crate::checkpoint::save(out.join("best.safetensors"), &sd)?;
        }
        crate::checkpoint::save(out.join("last.safetensors"), &sd)?;
        crate::checkpoint::save(
            out.join("optimizer.safetensors"),
            &optimizer_state(&net, &opt),
        )?;
        write_history(&out.join("history.csv"), &history)?;
        let conf = json!({
            "train": cfg.to_json(),
            "epochs_done": epoch + 1,
            "best_val_loss": if best_loss.is_finite() { json!(best_loss) } else { Value::Null },
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "train_subjects": train_ids,
            "val_subjects": val_ids,
            "best_model": "best.safetensors",
            "last_model": "last.safetensors",
            "optimizer_state": "optimizer.safetensors",
        });
        write_atomic(
            &out.join("config.json"),
            &serde_json::to_string_pretty(&conf).map_err(|e| io_err(out, e))?,
        )?;
        if let Err(e) = curves(&out.join("curves.png"), &history) {
            log::warn!("could not draw the curves: {e}");
        }
        println!(
            "epoch {}/{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4}{} ({:.1} s)",
            epoch + 1,
            cfg.epochs,
            rec.train_loss,
            rec.train_acc,
            vl,
            vacc,
            if improved { " *best*" } else { "" },
            rec.seconds
        );
    }
    Ok(TrainOutcome {
        history,
        best_epoch,
        best_val_loss: best_loss,
        step_seconds: step_time / steps_done.max(1) as f64,
    })
}

fn progress(len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

fn write_history(path: &Path, h: &[EpochRecord]) -> Result<()> {
    let mut s = String::from("epoch,train_loss,train_acc,val_loss,val_acc,seconds\n");
    for r in h {
        // `{:?}` prints the shortest decimal that reads back to the same f64.
        s.push_str(&format!(
            "{},{:?},{:?},{:?},{:?},{:.3}\n",
            r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.seconds
        ));
    }
    write_atomic(path, &s)
}

/// Reads `history.csv` (as [`write_history`] writes it).
pub fn read_history(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || io_err(path, format!("line {}: malformed", n + 1));
        if f.len() != 6 {
            return Err(bad());
        }
        let num = |i: usize| f[i].parse::<f64>().map_err(|_| bad());
        out.push(EpochRecord {
            epoch: f[0].parse().map_err(|_| bad())?,
            train_loss: num(1)?,
            train_acc: num(2)?,
            val_loss: num(3)?,
            val_acc: num(4)?,
            seconds: num(5)?,
        });
    }
    Ok(out)
}

/// The embedded font for the plots' text (plotters' bitmap backend draws no text without one).
pub(crate) static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

pub(crate) fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: "plot".into(),
        msg: e.to_string(),
    }
}

/// `curves.png`: training and validation loss (left) and accuracy (right) per epoch.
pub fn curves(path: &Path, h: &[EpochRecord]) -> Result<()> {
    use plotters::prelude::*;
    if h.is_empty() {
        return Ok(());
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| plot_err("the bundled font is not a valid font"))?;
    let root = BitMapBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(550);
    let x_max = h.last().map_or(1, |r| r.epoch).max(2) as f64;
    let font = |size: u32| ("sans-serif", size).into_font();
    type Get = fn(&EpochRecord) -> f64;
    let panels: [(&_, &str, Get, Get); 2] = [
        (&left, "loss", |r| r.train_loss, |r| r.val_loss),
        (&right, "accuracy", |r| r.train_acc, |r| r.val_acc),
    ];
    for (area, what, tr, va) in panels {
        let vals = h.iter().flat_map(|r| [tr(r), va(r)]);
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("U-Net {what} per epoch"), font(20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(1.0..x_max, (lo - pad)..(hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(what)
            .label_style(font(13))
            .axis_desc_style(font(15))
            .draw()
            .map_err(plot_err)?;
        let orange = RGBColor(230, 120, 0);
        chart
            .draw_series(
                LineSeries::new(
                    h.iter().map(|r| (r.epoch as f64, tr(r))),
                    BLUE.stroke_width(2),
                )
                .point_size(3),
            )
            .map_err(plot_err)?
            .label(format!("training {what}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(
                LineSeries::new(
                    h.iter().map(|r| (r.epoch as f64, va(r))),
                    orange.stroke_width(2),
                )
                .point_size(3),
            )
            .map_err(plot_err)?
            .label(format!("validation {what}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2))
            });
        chart
            .configure_series_labels()
            .label_font(font(13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}
