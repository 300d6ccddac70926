//! PyTorch parity: every single-op fixture in `KILN_FIXTURES` (default
//! `../shared/fixtures/torch`) is run through kiln, and its outputs and every `grad.*` are
//! compared with PyTorch's within the file's `tol`.
//!
//! Nothing here is keyed on file names: the op name and the `args` decide what runs, so other
//! fixture sets (other shapes, other attributes) are checked the same way. An op kiln does not
//! know is a failure, not a skip. `training` and `optimizer` cases are whole training steps,
//! not single ops; they are listed as not run here, with that reason.

mod common;

use common::{compare, fixture_files, is_float, Fixture};
use kiln::functional::{self as F, ConvOpts, PoolOpts, Reduction};
use kiln::Tensor;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn arg<'a>(args: &'a Value, key: &str) -> Result<&'a Value, String> {
    args.get(key).ok_or_else(|| format!("args has no `{key}`"))
}

fn opt_f64(args: &Value, key: &str) -> Option<f64> {
    args.get(key).and_then(Value::as_f64)
}

fn i64_arg(args: &Value, key: &str) -> Result<i64, String> {
    arg(args, key)?
        .as_i64()
        .ok_or_else(|| format!("args.{key} is not an integer"))
}

fn bool_arg(args: &Value, key: &str, default: bool) -> bool {
    args.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// An int or a list of ints (PyTorch's `_size_any_t`).
fn ints(args: &Value, key: &str) -> Result<Vec<i64>, String> {
    match arg(args, key)? {
        Value::Number(n) => Ok(vec![n
            .as_i64()
            .ok_or_else(|| format!("args.{key} is not an integer"))?]),
        Value::Array(v) => v
            .iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| format!("args.{key} has a non-integer"))
            })
            .collect(),
        _ => Err(format!("args.{key} is neither an int nor a list")),
    }
}

fn usizes(args: &Value, key: &str, default: &[usize]) -> Result<Vec<usize>, String> {
    if args.get(key).is_none_or(Value::is_null) {
        return Ok(default.to_vec());
    }
    Ok(ints(args, key)?.into_iter().map(|v| v as usize).collect())
}

fn isizes(args: &Value, key: &str) -> Result<Vec<isize>, String> {
    Ok(ints(args, key)?.into_iter().map(|v| v as isize).collect())
}

fn reduction(args: &Value) -> Result<Reduction, String> {
    match args
        .get("reduction")
        .and_then(Value::as_str)
        .unwrap_or("mean")
    {
        "mean" => Ok(Reduction::Mean),
        "sum" => Ok(Reduction::Sum),
        "none" => Ok(Reduction::None),
        r => Err(format!("unknown reduction {r}")),
    }
}

fn input<'a>(ins: &'a [Tensor], i: usize, op: &str) -> Result<&'a Tensor, String> {
    ins.get(i)
        .ok_or_else(|| format!("{op} needs at least {} inputs", i + 1))
}

/// Runs one op with PyTorch's argument names and semantics; returns its outputs in order.
fn run_op(
    op: &str,
    args: &Value,
    names: &[String],
    ins: &mut [Tensor],
) -> Result<Vec<Tensor>, String> {
    let named = |n: &str| names.iter().position(|x| x == n).map(|i| ins[i].clone());
    let x = input(ins, 0, op)?.clone();
    let unary = |f: fn(&Tensor) -> Tensor| Ok(vec![f(&x)]);
    match op {
        "neg" => unary(|t| t.neg()),
        "exp" => unary(Tensor::exp),
        "log" => unary(Tensor::log),
        "sqrt" => unary(Tensor::sqrt),
        "relu" => unary(Tensor::relu),
        "sigmoid" => unary(Tensor::sigmoid),
        "tanh" => unary(Tensor::tanh),
        "abs" => unary(Tensor::abs),
        "reciprocal" => unary(Tensor::reciprocal),
        "add" | "sub" | "mul" | "div" | "maximum" | "minimum" | "pow" => {
            let b = input(ins, 1, op)?;
            Ok(vec![match op {
                "add" => x.add(b),
                "sub" => x.sub(b),
                "mul" => x.mul(b),
                "div" => x.div(b),
                "maximum" => x.maximum(b),
                "minimum" => x.minimum(b),
                _ => x.pow(b),
            }])
        }
        "clamp" => Ok(vec![x.clamp(opt_f64(args, "min"), opt_f64(args, "max"))]),
        "where" => Ok(vec![kiln::where_(
            &x,
            input(ins, 1, op)?,
            input(ins, 2, op)?,
        )]),
        "sum" | "mean" | "amax" => {
            let keep = bool_arg(args, "keepdim", false);
            let dims = match args.get("dim") {
                None | Some(Value::Null) => None,
                Some(_) => Some(isizes(args, "dim")?),
            };
            Ok(vec![match (op, dims) {
                ("sum", None) => x.sum_all(),
                ("mean", None) => x.mean_all(),
                (_, None) => x.max_all(),
                ("sum", Some(d)) => x.sum(&d, keep),
                ("mean", Some(d)) => x.mean(&d, keep),
                (_, Some(d)) => x.amax(&d, keep),
            }])
        }
        "softmax" => Ok(vec![F::softmax(&x, i64_arg(args, "dim")? as isize)]),
        "log_softmax" => Ok(vec![F::log_softmax(&x, i64_arg(args, "dim")? as isize)]),
        "matmul" => Ok(vec![x.matmul(input(ins, 1, op)?)]),
        "linear" => Ok(vec![F::linear(&x, input(ins, 1, op)?, ins.get(2))]),
        "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | "conv_transpose2d"
        | "conv_transpose3d" => {
            let (stride, padding, dilation) = (
                usizes(args, "stride", &[1])?,
                usizes(args, "padding", &[0])?,
                usizes(args, "dilation", &[1])?,
            );
            let output_padding = usizes(args, "output_padding", &[0])?;
            let opts = ConvOpts {
                stride: &stride,
                padding: &padding,
                dilation: &dilation,
                groups: args.get("groups").and_then(Value::as_u64).unwrap_or(1) as usize,
                output_padding: &output_padding,
            };
            let w = input(ins, 1, op)?;
            let b = ins.get(2);
            let r = if op.starts_with("conv_transpose") {
                F::try_conv_transpose(&x, w, b, &opts)
            } else {
                F::try_conv(&x, w, b, &opts)
            };
            Ok(vec![r.map_err(|e| e.to_string())?])
        }
        "max_pool1d" | "max_pool2d" | "max_pool3d" | "avg_pool1d" | "avg_pool2d" | "avg_pool3d" => {
            let nd = op[op.len() - 2..op.len() - 1]
                .parse::<usize>()
                .map_err(|e| e.to_string())?;
            let k = usizes(args, "kernel_size", &[])?;
            let s = usizes(args, "stride", &[])?;
            let p = usizes(args, "padding", &[0])?;
            let d = usizes(args, "dilation", &[1])?;
            let opts = PoolOpts {
                kernel_size: &k,
                stride: &s,
                padding: &p,
                dilation: &d,
            };
            let r = if op.starts_with("max") {
                F::try_max_pool(&x, nd, &opts)
            } else {
                F::try_avg_pool(&x, nd, &opts)
            };
            Ok(vec![r.map_err(|e| e.to_string())?])
        }
        "batch_norm" => {
            let (w, b) = (named("weight"), named("bias"));
            let mut rm = named("running_mean");
            let mut rv = named("running_var");
            let y = F::batch_norm(
                &x,
                rm.as_mut(),
                rv.as_mut(),
                w.as_ref(),
                b.as_ref(),
                bool_arg(args, "training", false),
                opt_f64(args, "momentum").unwrap_or(0.1),
                opt_f64(args, "eps").unwrap_or(1e-5),
            );
            let mut outs = vec![y];
            outs.extend(rm);
            outs.extend(rv);
            Ok(outs)
        }
        "mse_loss" => Ok(vec![F::mse_loss(&x, input(ins, 1, op)?, reduction(args)?)]),
        "l1_loss" => Ok(vec![F::l1_loss(&x, input(ins, 1, op)?, reduction(args)?)]),
        "cross_entropy" | "nll_loss" => {
            let ignore = args
                .get("ignore_index")
                .and_then(Value::as_i64)
                .unwrap_or(-100);
            let w = named("weight");
            let t = input(ins, 1, op)?;
            Ok(vec![if op == "nll_loss" {
                F::try_nll_loss(&x, t, w.as_ref(), ignore, reduction(args)?)
                    .map_err(|e| e.to_string())?
            } else {
                F::cross_entropy(&x, t, w.as_ref(), ignore, reduction(args)?)
            }])
        }
        "binary_cross_entropy_with_logits" => Ok(vec![F::binary_cross_entropy_with_logits(
            &x,
            input(ins, 1, op)?,
            named("weight").as_ref(),
            named("pos_weight").as_ref(),
            reduction(args)?,
        )]),
        "binary_cross_entropy" => Ok(vec![F::binary_cross_entropy(
            &x,
            input(ins, 1, op)?,
            named("weight").as_ref(),
            reduction(args)?,
        )]),
        "reshape" | "view" => Ok(vec![x
            .try_reshape(&isizes(args, "shape")?)
            .map_err(|e| e.to_string())?]),
        "permute" => Ok(vec![x
            .try_permute(&isizes(args, "dims")?)
            .map_err(|e| e.to_string())?]),
        "transpose" => Ok(vec![x.transpose(
            i64_arg(args, "dim0")? as isize,
            i64_arg(args, "dim1")? as isize,
        )]),
        "cat" | "concat" => {
            let all: Vec<&Tensor> = ins.iter().collect();
            Ok(vec![
                kiln::try_cat(&all, i64_arg(args, "dim")? as isize).map_err(|e| e.to_string())?
            ])
        }
        "stack" => {
            let all: Vec<&Tensor> = ins.iter().collect();
            Ok(vec![kiln::stack(&all, i64_arg(args, "dim")? as isize)])
        }
        "narrow" => Ok(vec![x
            .try_narrow(
                i64_arg(args, "dim")? as isize,
                i64_arg(args, "start")? as usize,
                i64_arg(args, "length")? as usize,
            )
            .map_err(|e| e.to_string())?]),
        "pad" => Ok(vec![x
            .try_pad(&isizes(args, "pad")?, opt_f64(args, "value").unwrap_or(0.0))
            .map_err(|e| e.to_string())?]),
        "expand" => Ok(vec![x.expand(&isizes(args, "shape")?)]),
        "flatten" => Ok(vec![x.flatten(
            args.get("start_dim").and_then(Value::as_i64).unwrap_or(0) as isize,
            args.get("end_dim").and_then(Value::as_i64).unwrap_or(-1) as isize,
        )]),
        "leaky_relu" => {
            Ok(vec![x.leaky_relu(
                opt_f64(args, "negative_slope").unwrap_or(0.01),
            )])
        }
        other => Err(format!(
            "op `{other}` is not supported by the parity runner"
        )),
    }
}

/// Runs one single-op case: forward values, then the gradients of sum(out * cotangent).
fn run_case(fx: &Fixture) -> Result<String, String> {
    let args = fx.json("args");
    let names = fx.list("inputs");
    let grads = fx.list("grads");
    let tol = fx.tol();
    let mut ins: Vec<Tensor> = Vec::new();
    for n in &names {
        let t = fx.get(n)?.clone();
        ins.push(if grads.contains(n) {
            t.requires_grad_(true)
        } else {
            t
        });
    }
    let leaves = ins.clone();
    let outs = run_op(fx.op(), &args, &names, &mut ins)?;
    let out_names = fx.list("outputs");
    if outs.len() != out_names.len() {
        return Err(format!(
            "kiln gave {} outputs, the fixture has {}",
            outs.len(),
            out_names.len()
        ));
    }
    let mut worst = 0.0f64;
    let mut total: Option<Tensor> = None;
    for (o, name) in outs.iter().zip(&out_names) {
        worst = worst.max(compare(name, o, fx.get(name)?, tol)?);
        let cot_name = match name.split_once('.') {
            Some((_, i)) => format!("cotangent.{i}"),
            None => "cotangent".to_string(),
        };
        if let Some(c) = fx.tensors.get(&cot_name) {
            if is_float(o) && o.requires_grad() {
                let term = o.mul(c).sum_all();
                total = Some(match total {
                    None => term,
                    Some(t) => t.add(&term),
                });
            }
        }
    }
    if !grads.is_empty() {
        let total = total.ok_or("the fixture has gradients but kiln's outputs carry none")?;
        total
            .try_backward(None)
            .map_err(|e| format!("backward: {e}"))?;
        for g in &grads {
            let i = names
                .iter()
                .position(|n| n == g)
                .ok_or_else(|| format!("grad.{g} names no input"))?;
            let got = leaves[i]
                .grad()
                .ok_or_else(|| format!("kiln computed no gradient for `{g}`"))?;
            worst = worst.max(compare(
                &format!("grad.{g}"),
                &got,
                fx.get(&format!("grad.{g}"))?,
                tol,
            )?);
        }
    }
    Ok(format!("max rel err {worst:.1e} (tol {tol:e})"))
}

#[test]
fn torch_parity() {
    let files = fixture_files();
    assert!(
        !files.is_empty(),
        "no fixtures found in {}",
        common::fixture_dir().display()
    );
    let (mut passed, mut failed, mut not_single) = (Vec::new(), Vec::new(), Vec::new());
    for path in &files {
        let fx = match Fixture::load(path) {
            Ok(f) => f,
            Err(e) => {
                failed.push((path.display().to_string(), e));
                continue;
            }
        };
        if matches!(fx.op(), "training" | "optimizer") {
            not_single.push(fx.name.clone());
            continue;
        }
        let res = catch_unwind(AssertUnwindSafe(|| run_case(&fx)))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
        match res {
            Ok(msg) => passed.push(format!("{} ({}): {msg}", fx.name, fx.op())),
            Err(e) => failed.push((format!("{} ({})", fx.name, fx.op()), e)),
        }
    }
    for p in &passed {
        println!("ok    {p}");
    }
    for (n, e) in &failed {
        println!("FAIL  {n}: {e}");
    }
    println!(
        "torch parity over {}: {} single-op cases passed, {} failed; {} not run here because they are whole training or optimizer steps, not single ops (tests/torch_training.rs runs those it supports): {}",
        common::fixture_dir().display(),
        passed.len(),
        failed.len(),
        not_single.len(),
        not_single.join(", ")
    );
    assert!(
        failed.is_empty(),
        "{} of {} single-op cases failed (see FAIL lines above)",
        failed.len(),
        failed.len() + passed.len()
    );
    assert!(!passed.is_empty(), "no single-op case ran");
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
