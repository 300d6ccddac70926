//! Optimisers, schedulers and gradient clipping.
//!
//! - Every `op = optimizer` fixture in `KILN_FIXTURES` (default `../shared/fixtures/torch`):
//!   the optimiser named by `args.optimizer`, built from the args' hyper-parameters, is fed
//!   `step<k>.grad` and must reproduce PyTorch's `step<k>.param` within the file's `tol`.
//!   Nothing is keyed on file names; an unknown optimiser or hyper-parameter is a failure.
//! - The LeNet `op = training` fixtures (`args.model = lenet`): PyTorch's initial weights are
//!   loaded into `kiln::nn::LeNet`, and the losses, first-step gradients and parameters after
//!   every step must match.
//! - RMSprop, the schedulers and clipping have no fixtures: they are checked against sequences
//!   computed here from PyTorch's documented formulas (and cross-checked once against PyTorch).

mod common;

use common::{compare, fixture_files, Fixture};
use kiln::functional::{self as F, Reduction};
use kiln::nn::Module;
use kiln::optim::{
    clip_grad_norm_, clip_grad_norm_with, clip_grad_value_, Adadelta, AdadeltaOptions, Adam,
    AdamOptions, AdamW, CosineAnnealingLR, LrScheduler, Optimizer, PlateauMode, PlateauOptions,
    ReduceLROnPlateau, RmsProp, RmsPropOptions, Sgd, SgdOptions, StepLR, ThresholdMode,
};
use kiln::{DType, Tensor};
use serde_json::{Map, Value};

// ----- building an optimiser from fixture args ---------------------------------------------------

/// Reads the hyper-parameters of `args` (PyTorch's names), rejecting any it does not know, so
/// a fixture with a hyper-parameter kiln would ignore fails instead of passing by accident.
struct Args<'a> {
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Args<'a> {
    fn f64(&mut self, key: &'static str, default: f64) -> Result<f64, String> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("args.{key} = {v} is not a number")),
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, String> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("args.{key} = {v} is not a bool")),
        }
    }

    fn pair(&mut self, key: &'static str, default: (f64, f64)) -> Result<(f64, f64), String> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Array(v)) if v.len() == 2 => match (v[0].as_f64(), v[1].as_f64()) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => Err(format!("args.{key} is not a pair of numbers")),
            },
            Some(v) => Err(format!("args.{key} = {v} is not a pair of numbers")),
        }
    }

    /// Fails on keys nobody read (besides `ignored` ones, which belong to the model or loss).
    fn finish(&self, ignored: &[&str]) -> Result<(), String> {
        // Implementation switches that do not change the math.
        const IMPL: [&str; 4] = ["foreach", "fused", "capturable", "differentiable"];
        for k in self.map.keys() {
            let k = k.as_str();
            if k != "optimizer"
                && !self.used.contains(&k)
                && !ignored.contains(&k)
                && !IMPL.contains(&k)
            {
                return Err(format!(
                    "args.{k} is a hyper-parameter this test does not know"
                ));
            }
        }
        Ok(())
    }
}

/// The optimiser `args.optimizer` over `params`, with the args' hyper-parameters and
/// PyTorch's defaults for the others.
fn make_optimizer(
    args: &Value,
    params: Vec<Tensor>,
    ignored: &[&str],
) -> Result<Box<dyn Optimizer>, String> {
    let map = args.as_object().ok_or("args is not a JSON object")?;
    let name = map
        .get("optimizer")
        .and_then(Value::as_str)
        .ok_or("args.optimizer is missing")?;
    let mut a = Args {
        map,
        used: Vec::new(),
    };
    let opt: Box<dyn Optimizer> = match name {
        "sgd" => Box::new(Sgd::with_options(
            params,
            SgdOptions {
                lr: a.f64("lr", 1e-3)?,
                momentum: a.f64("momentum", 0.0)?,
                dampening: a.f64("dampening", 0.0)?,
                weight_decay: a.f64("weight_decay", 0.0)?,
                nesterov: a.bool("nesterov", false)?,
                maximize: a.bool("maximize", false)?,
            },
        )),
        "adam" | "adamw" => {
            let adamw = name == "adamw";
            let o = AdamOptions {
                lr: a.f64("lr", 1e-3)?,
                betas: a.pair("betas", (0.9, 0.999))?,
                eps: a.f64("eps", 1e-8)?,
                weight_decay: a.f64("weight_decay", if adamw { 1e-2 } else { 0.0 })?,
                amsgrad: a.bool("amsgrad", false)?,
                maximize: a.bool("maximize", false)?,
                decoupled_weight_decay: a.bool("decoupled_weight_decay", adamw)?,
            };
            if adamw {
                Box::new(AdamW::with_options(params, o))
            } else {
                Box::new(Adam::with_options(params, o))
            }
        }
        "adadelta" => Box::new(Adadelta::with_options(
            params,
            AdadeltaOptions {
                lr: a.f64("lr", 1.0)?,
                rho: a.f64("rho", 0.9)?,
                eps: a.f64("eps", 1e-6)?,
                weight_decay: a.f64("weight_decay", 0.0)?,
                maximize: a.bool("maximize", false)?,
            },
        )),
        "rmsprop" => Box::new(RmsProp::with_options(
            params,
            RmsPropOptions {
                lr: a.f64("lr", 1e-2)?,
                alpha: a.f64("alpha", 0.99)?,
                eps: a.f64("eps", 1e-8)?,
                weight_decay: a.f64("weight_decay", 0.0)?,
                momentum: a.f64("momentum", 0.0)?,
                centered: a.bool("centered", false)?,
                maximize: a.bool("maximize", false)?,
            },
        )),
        other => return Err(format!("unknown optimizer `{other}`")),
    };
    a.finish(ignored)?;
    opt.validate().map_err(|e| e.to_string())?;
    Ok(opt)
}

fn steps(fx: &Fixture) -> Result<usize, String> {
    fx.meta
        .get("steps")
        .ok_or("metadata has no `steps`")?
        .parse()
        .map_err(|e| format!("metadata `steps`: {e}"))
}

/// A fresh leaf holding a copy of `t`'s value (so updates never write into the fixture).
fn copy_of(t: &Tensor) -> Tensor {
    Tensor::from_literal((*t.literal().expect("fixture tensors are realised")).clone())
}

fn report(what: &str, results: Vec<(String, Result<f64, String>)>) {
    let mut failures = Vec::new();
    for (name, r) in &results {
        match r {
            Ok(err) => println!("{what} {name}: ok, max rel error {err:.3e}"),
            Err(e) => {
                println!("{what} {name}: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        !results.is_empty(),
        "no {what} fixtures in {} (set KILN_FIXTURES)",
        common::fixture_dir().display()
    );
    assert!(
        failures.is_empty(),
        "{} of {} {what} fixtures failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

// ----- optimizer fixtures ------------------------------------------------------------------------

fn run_optimizer_fixture(fx: &Fixture) -> Result<f64, String> {
    let tol = fx.tol();
    let p = copy_of(fx.get("param")?).requires_grad_(true);
    let mut opt = make_optimizer(&fx.json("args"), vec![p.clone()], &[])?;
    let mut worst = 0.0f64;
    for k in 0..steps(fx)? {
        p.set_grad(Some(fx.get(&format!("step{k}.grad"))?.clone()));
        opt.step().map_err(|e| format!("step {k}: {e}"))?;
        let e = compare(
            &format!("step{k}.param"),
            &p,
            fx.get(&format!("step{k}.param"))?,
            tol,
        )?;
        worst = worst.max(e);
    }
    Ok(worst)
}

#[test]
fn optimizer_fixtures_match_pytorch() {
    let mut results = Vec::new();
    for path in fixture_files() {
        let fx = match Fixture::load(&path) {
            Ok(fx) => fx,
            Err(e) => {
                results.push((path.display().to_string(), Err(e)));
                continue;
            }
        };
        if fx.op() != "optimizer" {
            continue;
        }
        let r = run_optimizer_fixture(&fx);
        results.push((fx.name.clone(), r));
    }
    report("optimizer", results);
}

// ----- LeNet training fixtures -------------------------------------------------------------------

fn run_lenet_fixture(fx: &Fixture) -> Result<f64, String> {
    let tol = fx.tol();
    let args = fx.json("args");
    let net = kiln::nn::LeNet::new(&mut kiln::Generator::new(0));
    let named = net.named_parameters();
    // PyTorch's initial weights, written into the model's parameters with one assign.
    let mut inits = Vec::new();
    for (name, p) in &named {
        let v = fx.get(&format!("param.{name}"))?;
        if v.shape() != p.shape() {
            return Err(format!(
                "param.{name}: fixture shape {:?}, kiln's {:?}",
                v.shape(),
                p.shape()
            ));
        }
        inits.push((p.clone(), v.clone()));
    }
    let pairs: Vec<(&Tensor, &Tensor)> = inits.iter().map(|(p, v)| (p, v)).collect();
    kiln::assign(&pairs).map_err(|e| e.to_string())?;
    let params: Vec<Tensor> = named.iter().map(|(_, p)| p.clone()).collect();
    let mut opt = make_optimizer(&args, params, &["model", "loss"])?;
    let loss_name = args
        .get("loss")
        .and_then(Value::as_str)
        .ok_or("args.loss is missing")?
        .to_string();
    let mut worst = 0.0f64;
    for k in 0..steps(fx)? {
        let x = fx.get(&format!("step{k}.x"))?;
        let y = fx.get(&format!("step{k}.y"))?;
        opt.zero_grad();
        let out = net.forward(x);
        let loss = match loss_name.as_str() {
            "mse_loss" => F::mse_loss(&out, y, Reduction::Mean),
            "cross_entropy" => F::cross_entropy(&out, y, None, -100, Reduction::Mean),
            other => return Err(format!("unknown loss `{other}`")),
        };
        loss.try_backward(None)
            .map_err(|e| format!("step {k}: {e}"))?;
        worst = worst.max(compare(
            &format!("step{k}.loss"),
            &loss.reshape(&[1]),
            fx.get(&format!("step{k}.loss"))?,
            tol,
        )?);
        if k == 0 {
            for (name, p) in &named {
                let g = p
                    .grad()
                    .ok_or_else(|| format!("{name} has no gradient after backward"))?;
                worst = worst.max(compare(
                    &format!("step0.grad.{name}"),
                    &g,
                    fx.get(&format!("step0.grad.{name}"))?,
                    tol,
                )?);
            }
        }
        opt.step().map_err(|e| format!("step {k}: {e}"))?;
        for (name, p) in &named {
            worst = worst.max(compare(
                &format!("step{k}.param.{name}"),
                p,
                fx.get(&format!("step{k}.param.{name}"))?,
                tol,
            )?);
        }
    }
    Ok(worst)
}

#[test]
fn lenet_training_fixtures_match_pytorch() {
    let mut results = Vec::new();
    for path in fixture_files() {
        let Ok(fx) = Fixture::load(&path) else {
            continue;
        };
        if fx.op() != "training" {
            continue;
        }
        let args = fx.json("args");
        if args.get("model").and_then(Value::as_str) != Some("lenet") {
            continue; // other models are run by the nn tests
        }
        let r = run_lenet_fixture(&fx);
        results.push((fx.name.clone(), r));
    }
    report("training", results);
}

// ----- helpers for the hand-computed cases -------------------------------------------------------

fn vec32(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>()
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }
}

fn param(v: &[f32]) -> Tensor {
    Tensor::from_slice(v).requires_grad_(true)
}

fn set_grad(p: &Tensor, g: &[f32]) {
    p.set_grad(Some(Tensor::from_vec(g.to_vec(), p.shape().to_vec())));
}

// ----- RMSprop against PyTorch's documented algorithm --------------------------------------------

/// RMSprop's algorithm box (torch.optim.RMSprop docs), one scalar coordinate, in f64.
#[allow(clippy::too_many_arguments)]
fn rmsprop_reference(
    p0: f64,
    grads: &[f64],
    lr: f64,
    alpha: f64,
    eps: f64,
    wd: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
) -> Vec<f64> {
    let (mut p, mut v, mut b, mut ga) = (p0, 0.0, 0.0, 0.0);
    let mut out = Vec::new();
    for &g0 in grads {
        let mut g = if maximize { -g0 } else { g0 };
        if wd != 0.0 {
            g += wd * p;
        }
        v = alpha * v + (1.0 - alpha) * g * g;
        let mut vt = v;
        if centered {
            ga = alpha * ga + (1.0 - alpha) * g;
            vt -= ga * ga;
        }
        if momentum > 0.0 {
            b = momentum * b + g / (vt.sqrt() + eps);
            p -= lr * b;
        } else {
            p -= lr * g / (vt.sqrt() + eps);
        }
        out.push(p);
    }
    out
}

#[test]
fn rmsprop_follows_pytorch_algorithm() {
    let p0 = [1.0f32, -2.0, 0.5];
    let grads = [
        [0.5f32, -0.25, 1.0],
        [-1.0, 0.75, 0.1],
        [0.3, 0.3, -2.0],
        [0.0, -0.6, 0.4],
    ];
    type Config = (f64, f64, f64, f64, f64, bool, bool);
    // (lr, alpha, eps, weight_decay, momentum, centered, maximize)
    let configs: [Config; 4] = [
        (1e-2, 0.99, 1e-8, 0.0, 0.0, false, false),
        (5e-2, 0.9, 1e-6, 0.1, 0.0, true, false),
        (1e-2, 0.95, 1e-8, 0.0, 0.8, false, true),
        (2e-2, 0.8, 1e-4, 0.05, 0.5, true, false),
    ];
    for (lr, alpha, eps, wd, momentum, centered, maximize) in configs {
        let p = param(&p0);
        let mut opt = RmsProp::new(vec![p.clone()])
            .lr(lr)
            .alpha(alpha)
            .eps(eps)
            .weight_decay(wd)
            .momentum(momentum)
            .centered(centered)
            .maximize(maximize);
        let mut got = vec![Vec::new(); 3];
        for g in &grads {
            set_grad(&p, g);
            opt.step().unwrap();
            for (i, v) in vec32(&p).into_iter().enumerate() {
                got[i].push(v);
            }
        }
        for i in 0..3 {
            let gi: Vec<f64> = grads.iter().map(|g| f64::from(g[i])).collect();
            let want = rmsprop_reference(
                f64::from(p0[i]),
                &gi,
                lr,
                alpha,
                eps,
                wd,
                momentum,
                centered,
                maximize,
            );
            assert_close(&got[i], &want, 2e-6);
        }
        let names: Vec<&str> = opt.state(&p).unwrap().iter().map(|(n, _)| *n).collect();
        let mut want_names = vec!["step", "square_avg"];
        if momentum > 0.0 {
            want_names.push("momentum_buffer");
        }
        if centered {
            want_names.push("grad_avg");
        }
        assert_eq!(names, want_names);
    }
}

#[test]
fn rmsprop_first_step_by_hand() {
    // v = 0.01 g^2, so the first step is lr * g / (0.1 |g| + eps) = 0.1 sign(g) (eps aside).
    let p = param(&[1.0, 1.0]);
    let mut opt = RmsProp::new(vec![p.clone()]);
    set_grad(&p, &[2.0, -0.5]);
    opt.step().unwrap();
    assert_close(
        &vec32(&p),
        &[
            1.0 - 0.01 * 2.0 / (0.2 + 1e-8),
            1.0 + 0.01 * 0.5 / (0.05 + 1e-8),
        ],
        1e-6,
    );
}

// ----- SGD, Adam, Adadelta details ---------------------------------------------------------------

#[test]
fn sgd_tutorial_api_and_momentum_by_hand() {
    // lr 0.1, momentum 0.9, constant gradient 1: b = 1, 1.9, 2.71; p = 1 - 0.1 * cumsum(b).
    let p = param(&[1.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.1).momentum(0.9);
    let mut got = Vec::new();
    for _ in 0..3 {
        opt.zero_grad();
        assert!(p.grad().is_none());
        set_grad(&p, &[1.0]);
        opt.step().unwrap();
        got.push(vec32(&p)[0]);
    }
    assert_close(&got, &[0.9, 0.71, 0.439], 1e-6);
}

#[test]
fn sgd_dampening_starts_with_the_raw_gradient() {
    // PyTorch: b = g on the first step, then b = mu b + (1 - dampening) g.
    // g = 1: b = 1, 0.9 + 0.5 = 1.4, 1.26 + 0.5 = 1.76; p = 1 - 0.1 * cumsum(b).
    let p = param(&[1.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.1).momentum(0.9).dampening(0.5);
    let mut got = Vec::new();
    for _ in 0..3 {
        set_grad(&p, &[1.0]);
        opt.step().unwrap();
        got.push(vec32(&p)[0]);
    }
    assert_close(&got, &[0.9, 0.76, 0.584], 1e-6);
    let st = opt.state(&p).unwrap();
    assert_eq!(st[0].0, "step");
    assert_eq!(st[0].1.item(), 3.0);
    assert_eq!(st[1].0, "momentum_buffer");
    assert_close(&vec32(&st[1].1), &[1.76], 1e-6);
}

#[test]
fn sgd_maximize_and_weight_decay_by_hand() {
    // g' = -g + wd p = -2 + 0.5 * 4 = 0 for the first coordinate; -1 + 0.5 * 2 ... etc.
    let p = param(&[4.0, 2.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.5)
        .weight_decay(0.5)
        .maximize(true);
    set_grad(&p, &[2.0, 3.0]);
    opt.step().unwrap();
    // p - lr * (-g + wd p): 4 - 0.5 * 0 = 4, 2 - 0.5 * (-3 + 1) = 3
    assert_close(&vec32(&p), &[4.0, 3.0], 1e-7);
}

#[test]
fn adam_first_steps_by_hand() {
    // Adam's bias correction makes the first step lr * g / (|g| + eps') = lr * sign(g).
    let p = param(&[1.0, -1.0]);
    let mut opt = Adam::new(vec![p.clone()]).lr(0.1);
    set_grad(&p, &[3.0, -0.5]);
    opt.step().unwrap();
    assert_close(&vec32(&p), &[0.9, -0.9], 1e-6);
    // Second step with g2: m = 0.9*0.1*g1 + 0.1*g2 ... written out for coordinate 0.
    set_grad(&p, &[1.0, -0.5]);
    opt.step().unwrap();
    let (g1, g2) = (3.0f64, 1.0f64);
    let m = 0.9 * (0.1 * g1) + 0.1 * g2;
    let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
    let mhat = m / (1.0 - 0.9f64.powi(2));
    let vhat = v / (1.0 - 0.999f64.powi(2));
    let want0 = 0.9 - 0.1 * mhat / (vhat.sqrt() + 1e-8);
    assert_close(&vec32(&p)[..1], &[want0], 1e-6);
    // Constant gradient: m_hat = g, v_hat = g^2, so every step is lr * sign(g).
    assert_close(&vec32(&p)[1..], &[-0.8], 1e-6);
}

#[test]
fn adam_amsgrad_keeps_the_max_second_moment() {
    let p = param(&[0.0]);
    let mut opt = Adam::new(vec![p.clone()]).lr(0.01).amsgrad(true);
    let mut want = 0.0f64;
    let (b1, b2) = (0.9f64, 0.999f64);
    let (mut m, mut v, mut vmax) = (0.0f64, 0.0f64, 0.0f64);
    for (t, g) in [4.0f64, 0.1, 0.1, -0.2].into_iter().enumerate() {
        set_grad(&p, &[g as f32]);
        opt.step().unwrap();
        let t = t as i32 + 1;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        vmax = vmax.max(v);
        want -= 0.01 / (1.0 - b1.powi(t)) * m / (vmax.sqrt() / (1.0 - b2.powi(t)).sqrt() + 1e-8);
        assert_close(&vec32(&p), &[want], 1e-6);
    }
    let st = opt.state(&p).unwrap();
    let names: Vec<&str> = st.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
    assert_close(&vec32(&st[3].1), &[vmax], 1e-6);
}

#[test]
fn adamw_is_adam_with_decoupled_decay() {
    // AdamW: p <- p (1 - lr wd) before the Adam step; the Adam step itself ignores wd.
    let p = param(&[2.0]);
    let mut opt = AdamW::new(vec![p.clone()]).lr(0.1).weight_decay(0.5);
    set_grad(&p, &[1.0]);
    opt.step().unwrap();
    assert_close(&vec32(&p), &[2.0 * (1.0 - 0.05) - 0.1], 1e-6);
    assert_eq!(AdamW::new(vec![]).defaults().weight_decay, 1e-2);
    assert!(AdamW::new(vec![]).defaults().decoupled_weight_decay);
    assert_eq!(Adam::new(vec![]).defaults().weight_decay, 0.0);
}

#[test]
fn adadelta_first_step_by_hand() {
    // s = (1 - rho) g^2; delta = sqrt(eps) / sqrt(s + eps) g; p -= lr delta.
    let p = param(&[1.0]);
    let mut opt = Adadelta::new(vec![p.clone()]);
    set_grad(&p, &[2.0]);
    opt.step().unwrap();
    let s = 0.1 * 4.0;
    let delta = (1e-6f64).sqrt() / (s + 1e-6f64).sqrt() * 2.0;
    assert_close(&vec32(&p), &[1.0 - delta], 1e-6);
    let st = opt.state(&p).unwrap();
    assert_close(&vec32(&st[1].1), &[s], 1e-6);
    assert_close(&vec32(&st[2].1), &[0.1 * delta * delta], 1e-6);
}

#[test]
fn f64_parameters_stay_f64() {
    let p = Tensor::from_slice(&[1.0f64, 2.0]).requires_grad_(true);
    let mut opt = Adam::new(vec![p.clone()]).lr(0.1);
    p.set_grad(Some(Tensor::from_slice(&[0.5f64, -0.5])));
    opt.step().unwrap();
    assert_eq!(p.dtype(), DType::F64);
    // lr * g / (|g| + eps) with m_hat = g, v_hat = g^2 on the first step.
    let step = 0.1 * 0.5 / (0.5 + 1e-8);
    assert_close(&p.to_vec::<f64>(), &[1.0 - step, 2.0 + step], 1e-15);
}

// ----- step semantics ----------------------------------------------------------------------------

#[test]
fn parameters_without_grad_are_skipped() {
    let a = param(&[1.0]);
    let b = param(&[1.0]);
    let mut opt = Adam::new(vec![a.clone(), b.clone()]).lr(0.1);
    set_grad(&a, &[1.0]);
    opt.step().unwrap();
    assert_close(&vec32(&a), &[0.9], 1e-6);
    assert_close(&vec32(&b), &[1.0], 0.0);
    assert!(opt.state(&b).is_none());
    // b's first step is a first step (bias correction with t = 1), a's is its second.
    set_grad(&b, &[1.0]);
    a.zero_grad();
    opt.step().unwrap();
    assert_close(&vec32(&b), &[0.9], 1e-6);
    assert_close(&vec32(&a), &[0.9], 1e-6);
    assert_eq!(opt.state(&a).unwrap()[0].1.item(), 1.0);
    assert_eq!(opt.state(&b).unwrap()[0].1.item(), 1.0);
}

#[test]
fn state_is_realised_leaves_that_do_not_grow() {
    let p = param(&[1.0, 2.0, 3.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.1).momentum(0.9);
    for _ in 0..5 {
        set_grad(&p, &[1.0, 1.0, 1.0]);
        opt.step().unwrap();
    }
    for (name, t) in opt.state(&p).unwrap() {
        assert!(t.is_realized(), "{name} is not realised");
        assert!(t.is_leaf(), "{name} is not a leaf");
    }
    // The parameter keeps its identity: it is updated in place, every alias sees it.
    let alias = p.detach();
    set_grad(&p, &[1.0, 1.0, 1.0]);
    opt.step().unwrap();
    assert_eq!(alias.to_vec::<f32>(), p.to_vec::<f32>());
}

#[test]
fn learning_rate_changes_apply_to_the_next_step() {
    let p = param(&[1.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.1);
    set_grad(&p, &[1.0]);
    opt.step().unwrap();
    opt.set_lr(0.01).unwrap();
    assert_eq!(opt.get_lr(), 0.01);
    opt.step().unwrap();
    assert_close(&vec32(&p), &[0.89], 1e-6);
    // Through the options of a group, too.
    opt.param_groups_mut()[0].options.lr = 0.5;
    opt.step().unwrap();
    assert_close(&vec32(&p), &[0.39], 1e-6);
}

#[test]
fn param_groups_have_their_own_hyper_parameters() {
    let a = param(&[1.0]);
    let b = param(&[1.0]);
    let mut opt = Sgd::new(vec![a.clone()], 0.1);
    let opts = opt.defaults().clone().lr(0.5).momentum(0.9);
    opt.add_param_group(vec![b.clone()], opts).unwrap();
    assert_eq!(Optimizer::lrs(&opt), vec![0.1, 0.5]);
    set_grad(&a, &[1.0]);
    set_grad(&b, &[1.0]);
    opt.step().unwrap();
    opt.step().unwrap();
    assert_close(&vec32(&a), &[0.8], 1e-6);
    assert_close(&vec32(&b), &[1.0 - 0.5 - 0.5 * 1.9], 1e-6);
    // A parameter in two groups is an error.
    let again = opt.defaults().clone();
    assert!(opt.add_param_group(vec![a.clone()], again).is_err());
    assert!(opt.set_group_lr(2, 0.1).is_err());
}

#[test]
fn invalid_hyper_parameters_are_errors_not_panics() {
    let p = param(&[1.0]);
    set_grad(&p, &[1.0]);
    let cases: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(vec![p.clone()], -0.1)),
        Box::new(Sgd::new(vec![p.clone()], 0.1).nesterov(true)),
        Box::new(
            Sgd::new(vec![p.clone()], 0.1)
                .momentum(0.9)
                .dampening(0.1)
                .nesterov(true),
        ),
        Box::new(Sgd::new(vec![p.clone()], 0.1).momentum(-0.9)),
        Box::new(Sgd::new(vec![p.clone()], f64::NAN)),
        Box::new(Adam::new(vec![p.clone()]).betas(1.0, 0.999)),
        Box::new(Adam::new(vec![p.clone()]).betas(0.9, -0.1)),
        Box::new(Adam::new(vec![p.clone()]).eps(-1.0)),
        Box::new(AdamW::new(vec![p.clone()]).weight_decay(-1.0)),
        Box::new(Adadelta::new(vec![p.clone()]).rho(1.5)),
        Box::new(RmsProp::new(vec![p.clone()]).alpha(-0.5)),
        Box::new(RmsProp::new(vec![p.clone()]).momentum(-0.5)),
        Box::new(Sgd::new(vec![p.clone(), p.clone()], 0.1)),
    ];
    for mut opt in cases {
        assert!(opt.validate().is_err());
        let err = opt.step().unwrap_err();
        assert!(!err.to_string().is_empty());
        assert_eq!(
            vec32(&p),
            vec![1.0],
            "a failed step must not change the parameter"
        );
    }
    // Errors name the caller's line and PyTorch's message.
    let err = Sgd::new(vec![p.clone()], -0.1)
        .step()
        .unwrap_err()
        .to_string();
    assert!(err.contains("Invalid learning rate: -0.1"), "{err}");
    assert!(err.contains("tests/optim.rs"), "{err}");
    // A gradient of the wrong shape.
    let mut opt = Sgd::new(vec![p.clone()], 0.1);
    p.set_grad(Some(Tensor::zeros([2])));
    let err = opt.step().unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
    // A non-leaf parameter.
    let q = param(&[1.0]).mul(2.0);
    let mut opt = Sgd::new(vec![q.clone()], 0.1);
    q.set_grad(Some(Tensor::ones([1])));
    assert!(opt.step().is_err());
    // A negative learning rate through the trait.
    let mut opt = Sgd::new(vec![p.clone()], 0.1);
    assert!(opt.set_lr(-1.0).is_err());
}

// ----- schedulers --------------------------------------------------------------------------------

/// Learning rates seen by `epochs` epochs (the lr in use during each epoch).
fn lr_sequence(opt: &mut dyn Optimizer, sched: &mut dyn LrScheduler, epochs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..epochs {
        out.push(opt.get_lr());
        opt.step().unwrap();
        sched.step(opt).unwrap();
        assert_eq!(sched.get_last_lr(), opt.lrs().as_slice());
    }
    out
}

#[test]
fn step_lr_sequence() {
    // lr_t = 0.1 * 0.1^(t div 3)
    let mut opt = Sgd::new(vec![param(&[1.0])], 0.1);
    let mut sched = StepLR::new(&opt, 3, 0.1).unwrap();
    let got = lr_sequence(&mut opt, &mut sched, 10);
    let want = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001];
    assert_close(&got, &want, 1e-12);
    assert_eq!(sched.last_epoch(), 10);
    assert!(StepLR::new(&opt, 0, 0.1).is_err());
}

#[test]
fn cosine_annealing_lr_sequence() {
    // eta_min + (base - eta_min)(1 + cos(pi t / 4)) / 2 with base 0.1, eta_min 0.001,
    // T_max 4, periodic beyond T_max (PyTorch's schedule has no restarts: it rises again).
    let c = std::f64::consts::FRAC_1_SQRT_2; // cos(pi/4)
    let hi = 0.001 + 0.099 * (1.0 + c) / 2.0; // 0.085501785...
    let lo = 0.001 + 0.099 * (1.0 - c) / 2.0; // 0.015498214...
    let want = [
        0.1, hi, 0.0505, lo, 0.001, lo, 0.0505, hi, 0.1, hi, 0.0505, lo, 0.001,
    ];
    assert_close(&[hi, lo], &[0.085_501_785_669, 0.015_498_214_331], 1e-11);
    let mut opt = Adam::new(vec![param(&[1.0])]).lr(0.1);
    let mut sched = CosineAnnealingLR::new(&opt, 4, 0.001).unwrap();
    let got = lr_sequence(&mut opt, &mut sched, want.len());
    assert_close(&got, &want, 1e-12);
    assert!(CosineAnnealingLR::new(&opt, 0, 0.0).is_err());
}

#[test]
fn cosine_annealing_each_group_from_its_base() {
    let mut opt = Sgd::new(vec![param(&[1.0])], 1.0);
    let o = opt.defaults().clone().lr(0.5);
    opt.add_param_group(vec![param(&[1.0])], o).unwrap();
    let mut sched = CosineAnnealingLR::new(&opt, 2, 0.0).unwrap();
    sched.step(&mut opt).unwrap();
    assert_close(&opt.lrs(), &[0.5, 0.25], 1e-12);
    sched.step(&mut opt).unwrap();
    assert_close(&opt.lrs(), &[0.0, 0.0], 1e-12);
    sched.step(&mut opt).unwrap();
    assert_close(&opt.lrs(), &[0.5, 0.25], 1e-12);
}

#[test]
fn reduce_lr_on_plateau_sequence() {
    // mode min, factor 0.5, patience 2, threshold 0.1 (rel), cooldown 1, min_lr 0.02.
    // Worked by hand from PyTorch's algorithm (see ReduceLROnPlateau's docs):
    //  epoch loss  best  better? bad  cooldown  lr after
    //  1     1.0   1.0   yes     0    0         0.1
    //  2     0.95  1.0   no      1    0         0.1     (0.95 >= 1.0 * 0.9)
    //  3     0.95        no      2              0.1
    //  4     0.95        no      3 > 2 -> cut   0.05    cooldown 1, bad 0
    //  5     0.8   0.8   yes     0    1->0      0.05
    //  6-8   0.8         no      1,2,3 -> cut   0.025   at epoch 8
    //  9     0.8         no      1 -> 0 (cooldown 1->0)
    //  10-12 0.8         no      1,2,3 -> cut   max(0.0125, 0.02) = 0.02 at epoch 12
    //  13    0.8         (cooldown)             0.02
    //  14-16 0.8         cut to max(0.01, 0.02) = 0.02: no change
    let losses = [
        1.0, 0.95, 0.95, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8,
    ];
    let want = [
        0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025, 0.02, 0.02, 0.02, 0.02,
        0.02,
    ];
    let mut opt = Sgd::new(vec![param(&[1.0])], 0.1);
    let mut sched = ReduceLROnPlateau::new(
        &opt,
        PlateauOptions::default()
            .factor(0.5)
            .patience(2)
            .threshold(0.1)
            .cooldown(1)
            .min_lr(0.02),
    )
    .unwrap();
    let mut got = Vec::new();
    for &l in &losses {
        sched.step(&mut opt, l).unwrap();
        got.push(opt.get_lr());
        assert_eq!(sched.get_last_lr(), &[opt.get_lr()]);
    }
    assert_close(&got, &want, 1e-12);
    assert_eq!(sched.best(), 0.8);
}

#[test]
fn reduce_lr_on_plateau_max_mode_abs_threshold() {
    // mode max, abs threshold 0.5, patience 0: better means > best + 0.5.
    // accuracies 1, 2, 2.4 (not better: bad 1 > 0 -> cut), 3 (better), 3.2 (cut).
    let mut opt = Sgd::new(vec![param(&[1.0])], 1.0);
    let mut sched = ReduceLROnPlateau::new(
        &opt,
        PlateauOptions::default()
            .mode(PlateauMode::Max)
            .threshold_mode(ThresholdMode::Abs)
            .threshold(0.5)
            .patience(0),
    )
    .unwrap();
    let mut got = Vec::new();
    for m in [1.0, 2.0, 2.4, 3.0, 3.2] {
        sched.step(&mut opt, m).unwrap();
        got.push(opt.get_lr());
    }
    assert_close(&got, &[1.0, 1.0, 0.1, 0.1, 0.01], 1e-12);
    assert!(ReduceLROnPlateau::new(&opt, PlateauOptions::default().factor(1.0)).is_err());
    assert!(
        ReduceLROnPlateau::new(&opt, PlateauOptions::default().min_lrs(vec![0.0, 0.0])).is_err()
    );
}

#[test]
fn schedulers_reach_the_update() {
    // The scheduler's lr is the one the next step uses.
    let p = param(&[1.0]);
    let mut opt = Sgd::new(vec![p.clone()], 0.1);
    let mut sched = StepLR::new(&opt, 1, 0.5).unwrap();
    set_grad(&p, &[1.0]);
    opt.step().unwrap(); // lr 0.1
    sched.step(&mut opt).unwrap();
    opt.step().unwrap(); // lr 0.05
    assert_close(&vec32(&p), &[0.85], 1e-6);
}

// ----- gradient clipping -------------------------------------------------------------------------

#[test]
fn clip_grad_norm_by_hand() {
    // Gradients [3, 4] (norm 5) and [[12]] (norm 12): total norm sqrt(25 + 144) = 13.
    let a = param(&[0.0, 0.0]);
    let b = Tensor::zeros([1, 1]).requires_grad_(true);
    let c = param(&[0.0]); // no gradient: ignored
    set_grad(&a, &[3.0, 4.0]);
    b.set_grad(Some(Tensor::from_vec(vec![12.0f32], [1, 1])));
    let total = clip_grad_norm_(&[a.clone(), b.clone(), c.clone()], 6.5).unwrap();
    assert!(total.is_realized());
    assert_eq!(total.shape(), &[] as &[usize]);
    assert_close(&[total.item()], &[13.0], 1e-7);
    let coef = 6.5 / (13.0 + 1e-6);
    assert_close(&vec32(&a.grad().unwrap()), &[3.0 * coef, 4.0 * coef], 1e-6);
    assert_close(&vec32(&b.grad().unwrap()), &[12.0 * coef], 1e-6);
    assert!(c.grad().is_none());

    // Below max_norm: unchanged (coefficient clamped to 1), the norm still returned.
    let total = clip_grad_norm_(&[a.clone(), b.clone()], 100.0).unwrap();
    assert_close(&[total.item()], &[6.5 / (13.0 + 1e-6) * 13.0], 1e-6);
    assert_close(&vec32(&a.grad().unwrap()), &[3.0 * coef, 4.0 * coef], 1e-6);

    // Infinity norm: max |g| = 12 -> coefficient 6 / (12 + 1e-6).
    set_grad(&a, &[3.0, -4.0]);
    b.set_grad(Some(Tensor::from_vec(vec![-12.0f32], [1, 1])));
    let total = clip_grad_norm_with(&[a.clone(), b.clone()], 6.0, f64::INFINITY).unwrap();
    assert_close(&[total.item()], &[12.0], 1e-7);
    let coef = 6.0 / (12.0 + 1e-6);
    assert_close(&vec32(&a.grad().unwrap()), &[3.0 * coef, -4.0 * coef], 1e-6);

    // 1-norm: 3 + 4 + 12 = 19.
    set_grad(&a, &[3.0, -4.0]);
    b.set_grad(Some(Tensor::from_vec(vec![12.0f32], [1, 1])));
    let total = clip_grad_norm_with(&[a.clone(), b.clone()], 1e3, 1.0).unwrap();
    assert_close(&[total.item()], &[19.0], 1e-7);

    // No gradients at all: norm 0.
    assert_eq!(
        clip_grad_norm_(std::slice::from_ref(&c), 1.0)
            .unwrap()
            .item(),
        0.0
    );
    // Bad arguments are errors.
    assert!(clip_grad_norm_(std::slice::from_ref(&a), -1.0).is_err());
    assert!(clip_grad_norm_with(std::slice::from_ref(&a), 1.0, 0.0).is_err());
    assert!(clip_grad_value_(std::slice::from_ref(&a), f64::NAN).is_err());
}

#[test]
fn clip_grad_norm_writes_in_place_and_handles_lazy_grads() {
    // A realised gradient is scaled in place: a handle to it sees the change (PyTorch's
    // `p.grad.mul_`).
    let a = param(&[0.0, 0.0]);
    let g = Tensor::from_slice(&[6.0f32, 8.0]);
    a.set_grad(Some(g.clone()));
    // A lazy gradient is replaced by its scaled value.
    let b = param(&[0.0]);
    b.set_grad(Some(Tensor::from_slice(&[0.0f32]).add(0.0)));
    let total = clip_grad_norm_(&[a.clone(), b.clone()], 5.0).unwrap();
    assert_close(&[total.item()], &[10.0], 1e-7);
    let coef = 5.0 / (10.0 + 1e-6);
    assert_close(&vec32(&g), &[6.0 * coef, 8.0 * coef], 1e-6);
    assert_close(&vec32(&b.grad().unwrap()), &[0.0], 0.0);
}

#[test]
fn clip_then_step() {
    // Clipping composes with the optimiser: SGD lr 1 moves by exactly the clipped gradient.
    let p = param(&[0.0, 0.0]);
    let mut opt = Sgd::new(vec![p.clone()], 1.0);
    set_grad(&p, &[30.0, 40.0]);
    clip_grad_norm_(std::slice::from_ref(&p), 1.0).unwrap();
    opt.step().unwrap();
    let coef = 1.0 / (50.0 + 1e-6);
    assert_close(&vec32(&p), &[-30.0 * coef, -40.0 * coef], 1e-6);
}

#[test]
fn clip_grad_value_by_hand() {
    let a = param(&[0.0, 0.0, 0.0]);
    set_grad(&a, &[-3.0, 0.5, 2.0]);
    clip_grad_value_(std::slice::from_ref(&a), 1.0).unwrap();
    assert_close(&vec32(&a.grad().unwrap()), &[-1.0, 0.5, 1.0], 0.0);
}

// ----- inside a compiled step --------------------------------------------------------------------

/// One training step of a linear model with optimiser `opt`, as a PyTorch user writes it.
fn train_step(
    opt: &mut dyn Optimizer,
    w: &Tensor,
    b: &Tensor,
    x: &Tensor,
    y: &Tensor,
) -> kiln::Result<Vec<Tensor>> {
    opt.zero_grad();
    let loss = F::mse_loss(&F::linear(x, w, Some(b)), y, Reduction::Mean);
    loss.try_backward(None)?;
    let norm = clip_grad_norm_(&[w.clone(), b.clone()], 0.5)?;
    opt.step()?;
    Ok(vec![loss, norm])
}

#[test]
fn optimizers_run_inside_a_compiled_step() {
    // The step count and the learning rate are graph inputs: one traced program serves every
    // step (Adam's bias correction changes each step, SGD's dampening treats the first step
    // apart) and sees a scheduler's learning-rate changes.
    type Make = fn(Vec<Tensor>) -> Box<dyn Optimizer>;
    let makers: [(&str, Make); 5] = [
        ("sgd", |p| {
            Box::new(Sgd::new(p, 0.1).momentum(0.9).dampening(0.3))
        }),
        ("adam", |p| Box::new(Adam::new(p).lr(0.05).amsgrad(true))),
        ("adamw", |p| Box::new(AdamW::new(p).lr(0.05))),
        ("adadelta", |p| {
            Box::new(Adadelta::new(p).weight_decay(0.01))
        }),
        ("rmsprop", |p| {
            Box::new(RmsProp::new(p).momentum(0.5).centered(true))
        }),
    ];
    let mut data = kiln::Generator::new(7);
    let batches: Vec<(Tensor, Tensor)> = (0..5)
        .map(|_| {
            (
                Tensor::randn_with([6, 4], DType::F32, &mut data),
                Tensor::randn_with([6, 2], DType::F32, &mut data),
            )
        })
        .collect();
    for (name, make) in makers {
        let init = |seed| {
            let mut g = kiln::Generator::new(seed);
            (
                Tensor::randn_with([2, 4], DType::F32, &mut g).requires_grad_(true),
                Tensor::randn_with([2], DType::F32, &mut g).requires_grad_(true),
            )
        };
        let (we, be) = init(1);
        let (wc, bc) = init(1);
        let mut eager = make(vec![we.clone(), be.clone()]);
        let mut compiled = make(vec![wc.clone(), bc.clone()]);
        let mut se = StepLR::new(eager.as_ref(), 2, 0.5).unwrap();
        let mut sc = StepLR::new(compiled.as_ref(), 2, 0.5).unwrap();
        let (x0, y0) = &batches[0];
        let step = kiln::compile::compile(&[x0, y0], |ins| {
            train_step(compiled.as_mut(), &wc, &bc, &ins[0], &ins[1])
        })
        .unwrap();
        for (k, (x, y)) in batches.iter().enumerate() {
            let e: Vec<f64> = train_step(eager.as_mut(), &we, &be, x, y)
                .unwrap()
                .iter()
                .map(Tensor::item)
                .collect();
            let c: Vec<f64> = step
                .run(&[x, y])
                .unwrap()
                .iter()
                .map(Tensor::item)
                .collect();
            assert_close(&c, &e, 1e-6);
            assert!(
                e[1] > 0.5,
                "{name} step {k}: the norm {} is not clipped",
                e[1]
            );
            assert_close(&vec32(&wc), &vec32(&we), 1e-6);
            assert_close(&vec32(&bc), &vec32(&be), 1e-6);
            se.step(eager.as_mut()).unwrap();
            sc.step(compiled.as_mut()).unwrap();
        }
    }
}
