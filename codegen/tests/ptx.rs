//! The PTX emitter (`kiln_codegen::cuda::ptx`), tested without a GPU:
//!
//! - every kernel of a fixed set of programs (the golden models, LeNet's training step, a 3-D
//!   U-Net-like training step, and an "op zoo" of every elementwise, compare, cast, reduction
//!   and movement op over every dtype) is emitted for sm_80 and sm_90 and assembled by
//!   `ptxas`; a failure names the kernel, the target and ptxas's message;
//! - the thread mapping is checked on the CPU: each kernel's collapsed loops are run as the GPU
//!   runs them (block and thread indices, grid-stride steps), recording which thread writes
//!   each element: every element of an output is written exactly once (an accumulating
//!   output: by exactly one thread, which alone reads it), and running the per-thread pieces
//!   through the kernel IR interpreter gives the same buffers as the plain loop nest;
//! - PTX text snapshots of a few kernels (`tests/golden/ptx_*.txt`; `UPDATE_GOLDEN=1`
//!   rewrites them).
//!
//! ptxas: `KILN_PTXAS` or `ptxas` on `PATH` (it ships in the `nvidia-cuda-nvcc-cu12` wheel).
//! Without one the validation test says so on stderr and checks only that emission succeeds;
//! with `KILN_REQUIRE_PTXAS=1` (set by `.ci/run`, which installs the wheel) a missing ptxas is
//! a failure.

mod common;
use common::Rng;
use kiln_codegen::cuda::contract;
use kiln_codegen::cuda::ptx::{self, EmitError, Mapping, Target};
use kiln_codegen::kernel::{self, Access, Atom, Body, Ix, KOp, Kernel, Stmt};
use kiln_codegen::{models, Program};
use kiln_ir::{
    autodiff, BinaryOp, CmpOp, ConvParams, DType, Data, Graph, NodeId, ReduceOp, SliceAxis,
    TensorType, UnaryOp,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn kernels_of(m: &models::Model) -> Vec<Kernel> {
    let p = Program::compile(&m.graph, &m.wanted, &m.inputs).expect("compiles");
    p.kernels().cloned().collect()
}

fn t(d: DType, s: &[usize]) -> TensorType {
    TensorType::new(d, s.to_vec())
}

/// Gradients of `loss` with respect to `params`, seeded with 1.
fn grads(g: &mut Graph, loss: NodeId, params: &[NodeId]) -> Vec<NodeId> {
    let seed = g.full_like(1.0, loss).unwrap();
    autodiff::grad(g, &[(loss, seed)], params)
        .unwrap()
        .into_iter()
        .zip(params)
        .map(|(gr, &p)| gr.unwrap_or(p))
        .collect()
}

/// A small 3-D U-Net's training step: conv3d + relu, strided-conv downsampling,
/// conv_transpose3d upsampling, an additive skip, a 1x1x1 conv to two classes, log-softmax
/// and a cross-entropy against one-hot targets; the loss and the gradients of the weights.
fn unet3d_step() -> models::Model {
    let mut g = Graph::new();
    let f = DType::F32;
    let x = g.input("x", t(f, &[1, 2, 6, 6, 6])).unwrap();
    let target = g.input("t", t(f, &[1, 2, 6, 6, 6])).unwrap();
    let w1 = g.param("w1", t(f, &[4, 2, 3, 3, 3])).unwrap();
    let w2 = g.param("w2", t(f, &[4, 4, 2, 2, 2])).unwrap();
    let w3 = g.param("w3", t(f, &[4, 4, 2, 2, 2])).unwrap();
    let w4 = g.param("w4", t(f, &[2, 4, 1, 1, 1])).unwrap();
    let mut p1 = ConvParams::new(3);
    p1.padding = vec![1, 1, 1];
    let h1 = g.conv(x, w1, p1).unwrap();
    let h1 = models::relu(&mut g, h1).unwrap();
    let mut p2 = ConvParams::new(3);
    p2.stride = vec![2, 2, 2];
    let h2 = g.conv(h1, w2, p2.clone()).unwrap();
    let h2 = models::relu(&mut g, h2).unwrap();
    let up = g.conv_transpose(h2, w3, p2).unwrap();
    let h3 = g.add(up, h1).unwrap();
    let logits = g.conv(h3, w4, ConvParams::new(3)).unwrap();
    let shape = g.shape(logits).to_vec();
    let m = g.reduce(ReduceOp::Max, logits, vec![1]).unwrap();
    let mb = g.broadcast_to(m, &shape).unwrap();
    let z = g.sub(logits, mb).unwrap();
    let e = g.unary(UnaryOp::Exp, z).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1]).unwrap();
    let ls = g.unary(UnaryOp::Log, s).unwrap();
    let lsb = g.broadcast_to(ls, &shape).unwrap();
    let logp = g.sub(z, lsb).unwrap();
    let prod = g.mul(logp, target).unwrap();
    let tot = g.reduce(ReduceOp::Sum, prod, vec![0, 1, 2, 3, 4]).unwrap();
    let tot = g.reshape(tot, vec![]).unwrap();
    let loss = g.scale(tot, -1.0 / 216.0).unwrap();
    let params = [w1, w2, w3, w4];
    let mut wanted = vec![loss];
    wanted.extend(grads(&mut g, loss, &params));
    models::Model {
        graph: g,
        inputs: vec![x, target, w1, w2, w3, w4],
        wanted,
    }
}

/// Every elementwise, compare, select, cast, reduction and movement op over every dtype it
/// takes, each wanted (so each gets a kernel of its own or shares one with its users).
fn op_zoo() -> models::Model {
    let mut g = Graph::new();
    let mut inputs = Vec::new();
    let mut wanted = Vec::new();
    let shape = [3, 5, 4];
    for (n, d) in [DType::F32, DType::F64, DType::I64, DType::Bool]
        .into_iter()
        .enumerate()
    {
        let a = g.input(format!("a{n}"), t(d, &shape)).unwrap();
        let b = g.input(format!("b{n}"), t(d, &shape)).unwrap();
        inputs.extend([a, b]);
        let mut w = Vec::new();
        if d.is_numeric() {
            let unary: &[UnaryOp] = if d.is_float() {
                &[
                    UnaryOp::Neg,
                    UnaryOp::Exp,
                    UnaryOp::Log,
                    UnaryOp::Sqrt,
                    UnaryOp::Recip,
                    UnaryOp::Abs,
                    UnaryOp::Tanh,
                    UnaryOp::Sigmoid,
                ]
            } else {
                &[UnaryOp::Neg, UnaryOp::Abs]
            };
            for &u in unary {
                w.push(g.unary(u, a).unwrap());
            }
            for &op in common::gen::binary_ops(d.is_float()) {
                w.push(g.binary(op, a, b).unwrap());
            }
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                for axes in [vec![2], vec![0], vec![0, 1], vec![0, 1, 2], vec![1]] {
                    w.push(g.reduce(op, a, axes).unwrap());
                }
            }
        }
        for c in [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ] {
            let cmp = g.compare(c, a, b).unwrap();
            w.push(cmp);
            if c == CmpOp::Lt {
                w.push(g.select(cmp, a, b).unwrap());
            }
        }
        for to in [DType::F32, DType::F64, DType::I64, DType::Bool] {
            if to != d {
                w.push(g.cast(a, to).unwrap());
            }
        }
        w.push(g.permute(a, vec![2, 0, 1]).unwrap());
        let sl = vec![
            SliceAxis {
                start: 1,
                end: 3,
                step: 1,
            },
            SliceAxis {
                start: 0,
                end: 5,
                step: 2,
            },
            SliceAxis {
                start: 1,
                end: 4,
                step: 2,
            },
        ];
        w.push(g.slice(a, sl).unwrap());
        w.push(g.pad(a, vec![1, 0, 2], vec![0, 2, 1], 1.0).unwrap());
        w.push(g.concat(&[a, b, a], 1).unwrap());
        let r = g.reshape(a, vec![3, 1, 20]).unwrap();
        w.push(g.expand(r, vec![3, 2, 20]).unwrap());
        wanted.extend(w);
    }
    models::Model {
        graph: g,
        inputs,
        wanted,
    }
}

/// Long reductions with few outputs, the case of the block-per-output mapping: softmax and
/// log-softmax rows (max, then sum of `exp(x - max)`: two combined reductions in one kernel or
/// two), a full sum of 76800 elements, two row sums of 40000 (split over 9 blocks each),
/// column sums over 2000 rows, an f64 max over a middle axis, an i64 full sum, and sums over
/// two separated axes.
fn reductions() -> models::Model {
    let mut g = Graph::new();
    let f = DType::F32;
    let mut wanted = Vec::new();
    let x = g.input("x", t(f, &[64, 300])).unwrap();
    let m = g.reduce(ReduceOp::Max, x, vec![1]).unwrap();
    let mb = g.broadcast_to(m, &[64, 300]).unwrap();
    let z = g.sub(x, mb).unwrap();
    let e = g.unary(UnaryOp::Exp, z).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1]).unwrap();
    let sb = g.broadcast_to(s, &[64, 300]).unwrap();
    wanted.push(g.div(e, sb).unwrap());
    let ls = g.unary(UnaryOp::Log, s).unwrap();
    let lsb = g.broadcast_to(ls, &[64, 300]).unwrap();
    wanted.push(g.sub(z, lsb).unwrap());
    let big = g.input("big", t(f, &[256, 300])).unwrap();
    let sq = g.mul(big, big).unwrap();
    wanted.push(g.reduce(ReduceOp::Sum, sq, vec![0, 1]).unwrap());
    let rows = g.input("rows", t(f, &[2, 40000])).unwrap();
    wanted.push(g.reduce(ReduceOp::Sum, rows, vec![1]).unwrap());
    let cols = g.input("cols", t(f, &[2000, 3])).unwrap();
    wanted.push(g.reduce(ReduceOp::Sum, cols, vec![0]).unwrap());
    let d = g.input("d", t(DType::F64, &[10, 500, 2])).unwrap();
    wanted.push(g.reduce(ReduceOp::Max, d, vec![1]).unwrap());
    let i = g.input("i", t(DType::I64, &[40, 50])).unwrap();
    wanted.push(g.reduce(ReduceOp::Sum, i, vec![0, 1]).unwrap());
    let w = g.input("w", t(f, &[30, 4, 20])).unwrap();
    wanted.push(g.reduce(ReduceOp::Sum, w, vec![0, 2]).unwrap());
    models::Model {
        graph: g,
        inputs: vec![x, big, rows, cols, d, i, w],
        wanted,
    }
}

/// Contractions whose sizes are not multiples of the GEMM tiles: an f32 matmul, a batched
/// f64 matmul, an f32 grouped, strided, dilated, padded 2-D conv with its two gradients, and
/// a `[20, 900] x [900, 24]` product (one tile, a long contraction: split-K).
fn gemms() -> models::Model {
    let mut g = Graph::new();
    let f = DType::F32;
    let a = g.input("a", t(f, &[70, 33])).unwrap();
    let b = g.input("b", t(f, &[33, 65])).unwrap();
    let mut wanted = vec![g.matmul(a, b).unwrap()];
    let c = g.input("c", t(DType::F64, &[2, 17, 40])).unwrap();
    let d = g.input("d", t(DType::F64, &[2, 40, 66])).unwrap();
    wanted.push(g.matmul(c, d).unwrap());
    let x = g.input("x", t(f, &[2, 4, 11, 9])).unwrap();
    let w = g.input("w", t(f, &[6, 2, 3, 2])).unwrap();
    let mut p = ConvParams::new(2);
    p.stride = vec![2, 1];
    p.padding = vec![1, 1];
    p.dilation = vec![1, 2];
    p.groups = 2;
    let y = g.conv(x, w, p.clone()).unwrap();
    wanted.push(y);
    let dy = g.input("dy", g.ty(y).clone()).unwrap();
    let mut pt = p.clone();
    pt.output_padding = vec![1, 0];
    wanted.push(g.conv_transpose(dy, w, pt).unwrap());
    wanted.push(g.conv_weight(x, dy, p, vec![3, 2]).unwrap());
    // A weight gradient's shape: small output, long contraction (split-K).
    let xt = g.input("xt", t(f, &[20, 900])).unwrap();
    let dyt = g.input("dyt", t(f, &[900, 24])).unwrap();
    wanted.push(g.matmul(xt, dyt).unwrap());
    models::Model {
        graph: g,
        inputs: vec![a, b, c, d, x, w, dy, xt, dyt],
        wanted,
    }
}

/// The programs whose kernels are emitted, by name.
fn suites() -> Vec<(&'static str, Vec<Kernel>)> {
    vec![
        (
            "mlp_step",
            kernels_of(&models::mlp_step(4, 8, 16, 3).unwrap()),
        ),
        (
            "conv_block",
            kernels_of(&models::conv_block(2, 3, 4, 8).unwrap()),
        ),
        ("lenet_step", kernels_of(&models::lenet_step(2).unwrap())),
        ("unet3d_step", kernels_of(&unet3d_step())),
        ("op_zoo", kernels_of(&op_zoo())),
        ("reductions", kernels_of(&reductions())),
        ("gemms", kernels_of(&gemms())),
    ]
}

/// What the emitter does not lower yet: nothing (the f64 transcendental functions were the
/// last). Any `EmitError` is a failure.
fn expected_unsupported(_e: &EmitError) -> bool {
    false
}

/// The ptxas to validate with, or why there is none.
fn find_ptxas() -> Result<PathBuf, String> {
    let cand = match std::env::var_os("KILN_PTXAS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("ptxas"),
    };
    match Command::new(&cand).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(cand),
        Ok(o) => Err(format!(
            "`{} --version` failed: {}",
            cand.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!(
            "no ptxas (`{}`: {e}); set KILN_PTXAS or put the nvidia-cuda-nvcc-cu12 wheel's \
             ptxas on PATH",
            cand.display()
        )),
    }
}

/// Assembles `text` with ptxas for `target`; the error is ptxas's message.
fn assemble(ptxas: &PathBuf, dir: &std::path::Path, k: &ptx::PtxKernel) -> Result<(), String> {
    let file = dir.join(format!("{}_{}.ptx", k.entry, k.target.name()));
    let out = dir.join(format!("{}_{}.cubin", k.entry, k.target.name()));
    std::fs::write(&file, &k.text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let o = Command::new(ptxas)
        .arg("--gpu-name")
        .arg(k.target.name())
        .arg("-o")
        .arg(&out)
        .arg(&file)
        .output()
        .map_err(|e| format!("running ptxas: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[test]
fn every_kernel_emits_and_ptxas_accepts_it() {
    let require = std::env::var("KILN_REQUIRE_PTXAS").is_ok_and(|v| v == "1");
    let ptxas = match find_ptxas() {
        Ok(p) => Some(p),
        Err(why) if require => panic!("KILN_REQUIRE_PTXAS=1 but {why}"),
        Err(why) => {
            eprintln!("ptx: NOT validating with ptxas: {why}");
            None
        }
    };
    let dir = std::env::temp_dir().join(format!("kiln-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut emitted, mut validated, mut skipped) = (0, 0, Vec::new());
    let mut failures = Vec::new();
    let mut all = Vec::new();
    for (suite, kernels) in suites() {
        for k in &kernels {
            for target in Target::ALL {
                let p = match ptx::emit(k, target) {
                    Ok(p) => p,
                    Err(e) if expected_unsupported(&e) => {
                        if target == Target::Sm90 {
                            skipped.push(format!("{suite}/{e}"));
                        }
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{suite}/{}: emit: {e}\n{k}", k.name));
                        continue;
                    }
                };
                emitted += 1;
                assert!(p
                    .text
                    .contains(&format!(".version {}", target.isa_version())));
                all.push((format!("{suite}/{}", k.name), p));
                // The opt-in TF32 path of f32 contractions too.
                if matches!(&k.body, Body::Call(c) if c.dtype == DType::F32) {
                    let opts = ptx::Options { allow_tf32: true };
                    match ptx::emit_with(k, target, opts) {
                        Ok(p) => {
                            assert!(p.text.contains("mma.sync"));
                            emitted += 1;
                            all.push((format!("{suite}/{} (tf32)", k.name), p));
                        }
                        Err(e) => failures.push(format!("{suite}/{}: tf32 emit: {e}", k.name)),
                    }
                }
            }
        }
    }
    if let Some(px) = &ptxas {
        validated = assemble_all(px, &dir, all, &mut failures);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "ptx: {emitted} kernels emitted (sm_80 + sm_90), {validated} assembled by ptxas, {} \
         kernels not lowered yet:\n  {}",
        skipped.len(),
        skipped.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(emitted >= 300, "only {emitted} kernels emitted");
}

/// `kernels` (with their names) in one PTX module per target: the first header, each entry
/// renamed `g<n>_<entry>` so the names stay distinct, module-level declarations once.
fn batch_module(kernels: &[(String, ptx::PtxKernel)]) -> String {
    let mut head = String::new();
    let mut decls: Vec<String> = Vec::new();
    let mut body = String::new();
    for (n, (_, k)) in kernels.iter().enumerate() {
        let renamed = format!("g{n}_{}", k.entry);
        for line in k.text.lines() {
            let l = line.trim_start();
            if l.starts_with(".version")
                || l.starts_with(".target")
                || l.starts_with(".address_size")
            {
                if n == 0 {
                    head.push_str(line);
                    head.push('\n');
                }
            } else if l.starts_with(".extern") {
                if !decls.iter().any(|d| d == line) {
                    decls.push(line.to_string());
                }
            } else {
                body.push_str(
                    &line
                        .replace(&format!("{}(", k.entry), &format!("{renamed}("))
                        .replace(&format!("{}_", k.entry), &format!("{renamed}_")),
                );
                body.push('\n');
            }
        }
    }
    format!("{head}{}\n{body}", decls.join("\n"))
}

/// Assembles `kernels` (all for one target) with as few ptxas runs as possible: one module per
/// batch, and each kernel of a failing batch alone, so a failure names its kernel.
fn assemble_batch(
    ptxas: &PathBuf,
    dir: &std::path::Path,
    kernels: &[(String, ptx::PtxKernel)],
    failures: &mut Vec<String>,
) -> usize {
    let Some((_, first)) = kernels.first() else {
        return 0;
    };
    let batch = ptx::PtxKernel {
        text: batch_module(kernels),
        entry: format!("batch_{}", first.entry),
        ..first.clone()
    };
    if assemble(ptxas, dir, &batch).is_ok() {
        return kernels.len();
    }
    let mut ok = 0;
    for (name, k) in kernels {
        match assemble(ptxas, dir, k) {
            Ok(()) => ok += 1,
            Err(msg) => failures.push(format!(
                "{name} ({}): ptxas: {msg}\n{}",
                k.target.name(),
                k.text
            )),
        }
    }
    if ok == kernels.len() {
        failures.push(format!(
            "batch of {} kernels from {} fails to assemble but each kernel alone passes",
            kernels.len(),
            first.entry
        ));
    }
    ok
}

/// Assembles `kernels` in batches of [`BATCH`] per target (one ptxas run each), the batches
/// spread over the machine's cores; returns how many kernels ptxas accepted.
fn assemble_all(
    ptxas: &PathBuf,
    dir: &std::path::Path,
    kernels: Vec<(String, ptx::PtxKernel)>,
    failures: &mut Vec<String>,
) -> usize {
    let mut batches: Vec<Vec<(String, ptx::PtxKernel)>> = Vec::new();
    for target in Target::ALL {
        let of: Vec<_> = kernels
            .iter()
            .filter(|(_, k)| k.target == target)
            .cloned()
            .collect();
        batches.extend(of.chunks(BATCH).map(|c| c.to_vec()));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new((0usize, Vec::new()));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = batches.get(i) else { break };
                let sub = dir.join(format!("w{i}"));
                std::fs::create_dir_all(&sub).unwrap();
                let mut f = Vec::new();
                let ok = assemble_batch(ptxas, &sub, b, &mut f);
                let mut o = out.lock().unwrap();
                o.0 += ok;
                o.1.extend(f);
            });
        }
    });
    let (ok, f) = out.into_inner().unwrap();
    failures.extend(f);
    ok
}

/// Kernels per ptxas run.
const BATCH: usize = 40;

/// Every kernel of the random graphs of the differential tests (`common/gen.rs`; `PTX_GRAPHS=n`
/// changes how many, 300 by default) emits for sm_80 and sm_90 and ptxas accepts it (in
/// batches, [`assemble_all`]); the tiled GEMMs among them are also emulated against the naive
/// contraction.
#[test]
fn random_graph_kernels_assemble() {
    let require = std::env::var("KILN_REQUIRE_PTXAS").is_ok_and(|v| v == "1");
    let ptxas = match find_ptxas() {
        Ok(p) => Some(p),
        Err(why) if require => panic!("KILN_REQUIRE_PTXAS=1 but {why}"),
        Err(why) => {
            eprintln!("ptx: NOT validating random graphs with ptxas: {why}");
            None
        }
    };
    let n: u64 = std::env::var("PTX_GRAPHS").map_or(300, |s| s.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("kiln-ptx-rand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    let mut all = Vec::new();
    let (mut emitted, mut assembled, mut gemms) = (0usize, 0usize, 0usize);
    let mut mappings: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..n {
        let (g, inputs, wanted, _) = common::gen::build(seed);
        let bound: Vec<NodeId> = inputs.iter().map(|(i, _)| *i).collect();
        let p = match Program::compile(&g, &wanted, &bound) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("seed {seed}: compile: {e}"));
                continue;
            }
        };
        for k in p.kernels() {
            if let Some(gm) = contract::gemm(k).unwrap() {
                // The tiled GEMM emulated thread by thread against the naive contraction:
                // groups, strides, dilations, padding and output padding of random convs.
                let mut want = random_bufs(k, 17);
                let mut got = want.clone();
                let r = kernel::interp::run(k, &mut want)
                    .and_then(|()| contract::emulate(&gm, &mut got))
                    .and_then(|()| close(&got, &want, 1e-5));
                if let Err(e) = r {
                    failures.push(format!("seed {seed}/{}: tiled GEMM: {e}\n{k}", k.name));
                }
                if gm.dtype == DType::F32 {
                    let mut tf = gm.clone();
                    tf.tf32 = true;
                    let mut got = random_bufs(k, 17);
                    // Random signs: compare with the magnitude of the operands' products.
                    let r =
                        contract::emulate(&tf, &mut got).and_then(|()| close(&got, &want, 1e-2));
                    if let Err(e) = r {
                        failures.push(format!("seed {seed}/{}: TF32 GEMM: {e}\n{k}", k.name));
                    }
                }
                gemms += 1;
            }
            for target in Target::ALL {
                match ptx::emit(k, target) {
                    Ok(pk) => {
                        emitted += 1;
                        *mappings.entry(pk.mapping.kind()).or_default() += 1;
                        all.push((format!("seed {seed}/{}", k.name), pk));
                    }
                    Err(e) => failures.push(format!("seed {seed}/{}: emit: {e}\n{k}", k.name)),
                }
            }
        }
    }
    if let Some(px) = &ptxas {
        assembled = assemble_all(px, &dir, all, &mut failures);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut m: Vec<_> = mappings.into_iter().collect();
    m.sort();
    eprintln!(
        "ptx: {n} random graphs, {emitted} kernels emitted (sm_80 + sm_90), {assembled} \
         assembled by ptxas; mappings {m:?}; {gemms} tiled GEMMs emulated"
    );
    assert!(
        failures.is_empty(),
        "{} failures; first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// The kernels of the float-only models all emit, contractions included.
#[test]
fn model_kernels_all_emit() {
    for (suite, kernels) in suites() {
        if suite == "op_zoo" {
            continue;
        }
        for k in &kernels {
            for target in Target::ALL {
                if let Err(e) = ptx::emit(k, target) {
                    panic!("{suite}: {e}\n{k}");
                }
            }
        }
    }
}

/// Walks `stmts` with the loop variables in `vars`, calling `f(buf, index, is_store)` on every
/// access to a buffer the kernel writes.
fn walk(
    k: &Kernel,
    stmts: &[Stmt],
    vars: &mut Vec<i64>,
    f: &mut impl FnMut(u32, i64, bool),
) -> Result<(), String> {
    let written = |b: u32| k.params[b as usize].access != Access::Read;
    for s in stmts {
        match s {
            Stmt::Loop(l) => {
                for i in 0..l.extent {
                    vars[l.var.0 as usize] = i as i64;
                    walk(k, &l.body, vars, f)?;
                }
            }
            Stmt::Store { buf, index, .. } => {
                f(buf.0, index.eval(vars, &k.defs), true);
            }
            Stmt::Let(
                _,
                KOp::Load {
                    buf,
                    index,
                    guard: None,
                },
            ) if written(buf.0) => f(buf.0, index.eval(vars, &k.defs), false),
            Stmt::Let(
                _,
                KOp::Load {
                    buf,
                    guard: Some(_),
                    ..
                },
            ) if written(buf.0) => {
                return Err(format!("guarded load of written buffer {buf}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `e` with the variables in `fixed` replaced by their values.
fn subst(e: &Ix, fixed: &HashMap<u32, i64>, ext: &[u64]) -> Ix {
    let mut r = Ix::constant(e.c);
    for (a, k) in &e.terms {
        let x = match a {
            Atom::Var(v) => match fixed.get(&v.0) {
                Some(&c) => Ix::constant(c),
                None => Ix::var(*v),
            },
            Atom::Div(e, d) => subst(e, fixed, ext).div(*d, ext),
            Atom::Mod(e, d) => subst(e, fixed, ext).rem(*d, ext),
        };
        r = r.add(&x.scale(*k));
    }
    r
}

fn subst_stmts(stmts: &[Stmt], fixed: &HashMap<u32, i64>, ext: &[u64]) -> Vec<Stmt> {
    stmts
        .iter()
        .map(|s| match s {
            Stmt::Loop(l) => {
                let mut l = l.clone();
                l.body = subst_stmts(&l.body, fixed, ext);
                Stmt::Loop(l)
            }
            Stmt::Let(v, KOp::Load { buf, index, guard }) => Stmt::Let(
                *v,
                KOp::Load {
                    buf: *buf,
                    index: subst(index, fixed, ext),
                    guard: *guard,
                },
            ),
            Stmt::Let(v, KOp::InRange { index, lo, hi }) => Stmt::Let(
                *v,
                KOp::InRange {
                    index: subst(index, fixed, ext),
                    lo: *lo,
                    hi: *hi,
                },
            ),
            Stmt::Store { buf, index, value } => Stmt::Store {
                buf: *buf,
                index: subst(index, fixed, ext),
                value: *value,
            },
            other => other.clone(),
        })
        .collect()
}

fn random_bufs(k: &Kernel, seed: u64) -> Vec<Data> {
    let mut rng = Rng::new(seed);
    k.params
        .iter()
        .map(|p| {
            let n = p.len as usize;
            match p.dtype {
                DType::F32 => Data::F32((0..n).map(|_| (rng.unit() + 1.5) as f32).collect()),
                DType::F64 => Data::F64((0..n).map(|_| rng.unit() + 1.5).collect()),
                DType::I64 => Data::I64((0..n).map(|_| rng.below(11) as i64 - 5).collect()),
                DType::Bool => Data::Bool((0..n).map(|_| rng.chance(0.5)).collect()),
            }
        })
        .collect()
}

/// Checks the GPU mapping of `k` for a launch of `grid` blocks of `block` threads. A
/// contraction is checked as the loop nest the emitter lowers it to, whose values must also
/// match the plain-loop contraction of the CPU side (`cpu::naive`, through the kernel IR
/// interpreter) up to the rounding of a different summation order.
fn check_mapping(k: &Kernel, grid: u32, block: u32) -> Result<(), String> {
    if let Some(g) = contract::gemm(k).map_err(|e| e.to_string())? {
        // The tiled kernel, emulated thread by thread (exactly-once stores and shared-tile
        // fills are checked inside), against the naive contraction.
        let mut want = random_bufs(k, 13);
        kernel::interp::run(k, &mut want)?;
        let mut got = random_bufs(k, 13);
        contract::emulate(&g, &mut got).map_err(|e| format!("tiled GEMM: {e}"))?;
        close(&got, &want, 1e-5).map_err(|e| format!("tiled GEMM: {e}"))?;
        if g.dtype == DType::F32 {
            // The opt-in TF32 tensor-core path: operands rounded to 10-bit mantissas, so only
            // close (2^-11 relative per operand; all values here are positive).
            let mut tf = g.clone();
            tf.tf32 = true;
            let mut got = random_bufs(k, 13);
            contract::emulate(&tf, &mut got).map_err(|e| format!("TF32 GEMM: {e}"))?;
            close(&got, &want, 3e-3).map_err(|e| format!("TF32 GEMM: {e}"))?;
        }
    }
    if let Some(loops) = contract::as_loops(k).map_err(|e| e.to_string())? {
        let mut want = random_bufs(k, 11);
        kernel::interp::run(k, &mut want)?;
        let mut got = random_bufs(k, 11);
        kernel::interp::run(&loops, &mut got)?;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
            let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            if let Some(j) = (0..g.len()).find(|&j| (g[j] - w[j]).abs() > 1e-5 * scale) {
                return Err(format!(
                    "contraction as loops: b{i}[{j}] = {} but the naive contraction gives {}",
                    g[j], w[j]
                ));
            }
        }
        return check_mapping(&loops, grid, block);
    }
    let mapping = Mapping::of(k);
    if let Mapping::BlockReduce { .. } = mapping {
        return check_block_reduce(k, grid);
    }
    let inner: Vec<Stmt> = match (&k.body, ptx::collapse(k)) {
        (Body::Loops(s), None) => s.clone(),
        (Body::Loops(_), Some((_, inner))) => inner.to_vec(),
        (Body::Call(_), _) => return Ok(()),
    };
    // Ownership: the thread writing each element, and how often it is written.
    let mut owner: HashMap<(u32, i64), (u64, u32)> = HashMap::new();
    let mut reads: Vec<((u32, i64), u64)> = Vec::new();
    let mut pieces: Vec<HashMap<u32, i64>> = Vec::new();
    let mut vars = vec![0i64; k.vars.len()];
    for b in 0..grid {
        for th in 0..block {
            let tid = u64::from(b) * u64::from(block) + u64::from(th);
            for flat in mapping.visits(grid, block, b, th) {
                let fixed: HashMap<u32, i64> = mapping
                    .split(flat)
                    .into_iter()
                    .map(|(v, x)| (v.0, x as i64))
                    .collect();
                for (&v, &x) in &fixed {
                    vars[v as usize] = x;
                }
                let mut err = None;
                walk(k, &inner, &mut vars, &mut |buf, i, store| {
                    if store {
                        let e = owner.entry((buf, i)).or_insert((tid, 0));
                        if e.0 != tid {
                            err = Some(format!("b{buf}[{i}] written by threads {} and {tid}", e.0));
                        }
                        e.1 += 1;
                    } else {
                        reads.push(((buf, i), tid));
                    }
                })?;
                if let Some(e) = err {
                    return Err(e);
                }
                pieces.push(fixed);
            }
        }
    }
    for (pi, p) in k.params.iter().enumerate() {
        for i in 0..p.len as i64 {
            match (p.access, owner.get(&(pi as u32, i))) {
                (Access::Read, _) => {}
                (_, None) => return Err(format!("b{pi}[{i}] is never written")),
                (Access::Write, Some(&(_, n))) if n != 1 => {
                    return Err(format!("b{pi}[{i}] is written {n} times"))
                }
                _ => {}
            }
        }
    }
    for (key, tid) in reads {
        match owner.get(&key) {
            Some(&(o, _)) if o == tid => {}
            other => {
                return Err(format!(
                    "b{}[{}] read by thread {tid}, written by {other:?}",
                    key.0, key.1
                ))
            }
        }
    }
    // Values: the per-thread pieces, run by the kernel IR interpreter one after another, give
    // what the loop nest gives.
    let mut want = random_bufs(k, 7);
    kernel::interp::run(k, &mut want)?;
    let mut got = random_bufs(k, 7);
    for fixed in &pieces {
        let mut piece = k.clone();
        piece.defs = k
            .defs
            .iter()
            .map(|d| d.as_ref().map(|d| subst(d, fixed, &k.vars)))
            .collect();
        piece.body = Body::Loops(subst_stmts(&inner, fixed, &k.vars));
        kernel::interp::run(&piece, &mut got)?;
    }
    if got != want {
        return Err("the mapped pieces compute different values".into());
    }
    Ok(())
}

/// The variables of `loops` at flat index `t`, innermost fastest, the first taking the rest
/// (written here again, independently of `Mapping::split`).
fn split_loops(loops: &[(kernel::Var, u64)], t: u64) -> Vec<(kernel::Var, i64)> {
    let mut rest = t;
    let mut out = Vec::new();
    for (n, &(v, e)) in loops.iter().enumerate().rev() {
        if n == 0 {
            out.push((v, rest as i64));
        } else {
            out.push((v, (rest % e) as i64));
            rest /= e;
        }
    }
    out
}

/// `got` against `want`: exact for integers and bools, within `tol` of the largest magnitude
/// for floats (NaN matching NaN).
fn close(got: &[Data], want: &[Data], tol: f64) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !matches!(w, Data::F32(_) | Data::F64(_)) {
            if g != w {
                return Err(format!("b{i} differs"));
            }
            continue;
        }
        let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = w
            .iter()
            .filter(|x| x.is_finite())
            .fold(1.0f64, |m, x| m.max(x.abs()));
        for j in 0..g.len() {
            let ok = (g[j].is_nan() && w[j].is_nan())
                || g[j] == w[j]
                || (g[j] - w[j]).abs() <= tol * scale;
            if !ok {
                return Err(format!(
                    "b{i}[{j}] = {} but the loop nest gives {}",
                    g[j], w[j]
                ));
            }
        }
    }
    Ok(())
}

fn reduce_binop(op: ReduceOp) -> BinaryOp {
    match op {
        ReduceOp::Sum => BinaryOp::Add,
        ReduceOp::Max => BinaryOp::Max,
    }
}

/// The block's tree over the threads' values (`ptx::block_combine` with the interpreter's
/// arithmetic).
fn tree(parts: &[kernel::Scalar], decl: kernel::AccDecl) -> kernel::Scalar {
    ptx::block_combine(
        parts,
        kernel::Scalar::identity(decl.op, decl.dtype),
        |x, y| kernel::interp::binary(reduce_binop(decl.op), x, y).expect("same types"),
    )
}

/// Checks a block-per-output reduction as the GPU runs it: `grid` blocks of the mapping's
/// threads take the outputs block-strided; per output, every thread runs the straight-line
/// statements with its own state, the reduction loops block-strided over their collapsed flat
/// index, each combined accumulator is folded in `ptx::block_combine`'s tree order and handed
/// to every thread, and thread 0 alone stores. Every element of every written buffer must be
/// stored exactly once, and the buffers must match the plain loop nest's up to the rounding of
/// the different summation order.
fn check_block_reduce(k: &Kernel, grid: u32) -> Result<(), String> {
    let Mapping::BlockReduce {
        outer,
        outputs,
        threads,
        split,
    } = Mapping::of(k)
    else {
        unreachable!()
    };
    // A split reduction has no grid-stride loop: its launch is exact.
    let grid = if split > 1 {
        Mapping::of(k).launch(ptx::MAX_GRID).0 / split
    } else {
        grid
    };
    let split = u64::from(split);
    let plan = ptx::block_plan(k).ok_or("BlockReduce without a plan")?;
    let mut got = random_bufs(k, 7);
    let mut writes: HashMap<(u32, i64), u32> = HashMap::new();
    let single = std::slice::from_ref;
    for b in 0..u64::from(grid) {
        let mut flat = b;
        while flat < outputs {
            let mut frames: Vec<kernel::interp::Frame> = (0..threads)
                .map(|_| kernel::interp::Frame::new(k))
                .collect();
            for f in &mut frames {
                for (v, x) in split_loops(&outer, flat) {
                    f.vars[v.0 as usize] = x;
                }
            }
            for (s, red) in plan.body.iter().zip(&plan.loops) {
                match (s, red) {
                    (Stmt::Store { buf, index, .. }, None) => {
                        let i = index.eval(&frames[0].vars, &k.defs);
                        *writes.entry((buf.0, i)).or_default() += 1;
                        kernel::interp::run_stmts(k, single(s), &mut got, &mut frames[0])?;
                    }
                    (_, None) => {
                        for f in &mut frames {
                            kernel::interp::run_stmts(k, single(s), &mut got, f)?;
                        }
                    }
                    (_, Some(red)) => {
                        // Block `part` of the `split` sharing this output: its threads'
                        // partials, combined by the tree.
                        let mut totals = Vec::new();
                        let before = frames.clone();
                        for part in 0..split {
                            frames = before.clone();
                            for (t, f) in frames.iter_mut().enumerate() {
                                let mut r = part * u64::from(threads) + t as u64;
                                while r < red.total {
                                    for (v, x) in split_loops(&red.nest, r) {
                                        f.vars[v.0 as usize] = x;
                                    }
                                    kernel::interp::run_stmts(k, red.inner, &mut got, f)?;
                                    r += split * u64::from(threads);
                                }
                            }
                            let mut block = Vec::new();
                            for &a in &red.combine {
                                let decl = k.accs[a.0 as usize];
                                let parts: Vec<_> =
                                    frames.iter().map(|f| f.accs[a.0 as usize]).collect();
                                block.push(tree(&parts, decl));
                            }
                            totals.push(block);
                        }
                        // With a split, the last block folds the published partials
                        // block-strided and combines them by the tree again.
                        for (n, &a) in red.combine.iter().enumerate() {
                            let decl = k.accs[a.0 as usize];
                            let total = if split == 1 {
                                totals[0][n]
                            } else {
                                let id = kernel::Scalar::identity(decl.op, decl.dtype);
                                let per: Vec<_> = (0..u64::from(threads))
                                    .map(|t| {
                                        (t..split).step_by(threads as usize).fold(id, |acc, p| {
                                            kernel::interp::binary(
                                                reduce_binop(decl.op),
                                                acc,
                                                totals[p as usize][n],
                                            )
                                            .expect("same types")
                                        })
                                    })
                                    .collect();
                                tree(&per, decl)
                            };
                            for f in &mut frames {
                                f.accs[a.0 as usize] = total;
                            }
                        }
                    }
                }
            }
            flat += u64::from(grid);
        }
    }
    for (pi, p) in k.params.iter().enumerate() {
        if p.access == Access::Read {
            continue;
        }
        for i in 0..p.len as i64 {
            match writes.get(&(pi as u32, i)) {
                Some(1) => {}
                n => return Err(format!("b{pi}[{i}] is written {n:?} times")),
            }
        }
    }
    let mut want = random_bufs(k, 7);
    kernel::interp::run(k, &mut want)?;
    close(&got, &want, 1e-5)
}

#[test]
fn thread_mapping_covers_every_element_once() {
    let mut checked = 0;
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for (suite, kernels) in suites() {
        if suite == "lenet_step" {
            // Same kernel shapes as the others at a size that makes this slow.
            continue;
        }
        for k in &kernels {
            let (grid, block) = Mapping::of(k).launch(ptx::MAX_GRID);
            *kinds.entry(Mapping::of(k).kind()).or_insert(0) += 1;
            // The real launch, a small grid that makes threads stride, and one block of one
            // warp (a block reduction keeps its block size: its PTX strides by it).
            for (g, b) in [(grid, block), (3, 32), (1, 32)] {
                if let Err(e) = check_mapping(k, g, b) {
                    panic!("{suite}/{} with {g}x{b} threads: {e}\n{k}", k.name);
                }
            }
            checked += 1;
        }
    }
    eprintln!("ptx: mappings checked: {kinds:?}");
    assert!(checked >= 50, "only {checked} kernels checked");
    assert!(
        kinds.get("block-reduce").copied().unwrap_or(0) >= 3
            && kinds.get("warp-reduce").copied().unwrap_or(0) >= 1
            && kinds.get("split-reduce").copied().unwrap_or(0) >= 1
            && kinds.get("grid-stride-v4").copied().unwrap_or(0) >= 1
            && kinds.get("gemm").copied().unwrap_or(0) >= 5
            && kinds.get("gemm-split-k").copied().unwrap_or(0) >= 1,
        "a mapping is not checked enough: {kinds:?}"
    );
}

#[test]
fn mapping_splits_flat_indices_innermost_fastest() {
    let m = Mapping::GridStride {
        loops: vec![
            (kernel::Var(0), 2),
            (kernel::Var(3), 3),
            (kernel::Var(1), 4),
        ],
        total: 24,
        vector: 1,
    };
    // 17 = 1*12 + 1*4 + 1
    assert_eq!(
        m.split(17),
        vec![
            (kernel::Var(0), 1),
            (kernel::Var(3), 1),
            (kernel::Var(1), 1)
        ]
    );
    assert_eq!(m.launch(ptx::MAX_GRID), (1, ptx::BLOCK));
    // 2 blocks of 4 threads over 24 indices: thread 1 of block 1 visits 5, 13, 21.
    assert_eq!(m.visits(2, 4, 1, 1), vec![5, 13, 21]);
    assert_eq!(Mapping::Single.visits(2, 4, 0, 1), Vec::<u64>::new());
}

/// PTX snapshots: a fused elementwise kernel with a broadcast, a reduction, and one with pad
/// guards, compared as text with `tests/golden/ptx_<name>.txt`.
#[test]
fn ptx_snapshots() {
    let conv = kernels_of(&models::conv_block(2, 3, 4, 8).unwrap());
    let mlp = kernels_of(&models::mlp_step(4, 8, 16, 3).unwrap());
    let zoo = kernels_of(&op_zoo());
    let red = kernels_of(&reductions());
    let pick = |ks: &[Kernel], pred: &dyn Fn(&Kernel) -> bool| -> Kernel {
        ks.iter().find(|k| pred(k)).cloned().expect("kernel found")
    };
    let cases = [
        (
            "ptx_conv_block_pool",
            pick(&conv, &|k| matches!(k.body, Body::Loops(_))),
            Target::Sm90,
        ),
        (
            "ptx_mlp_reduce",
            pick(&mlp, &|k| !k.accs.is_empty()),
            Target::Sm80,
        ),
        (
            "ptx_zoo_pad",
            pick(&zoo, &|k| k.to_string().contains("inrange")),
            Target::Sm90,
        ),
        (
            "ptx_softmax_max_block_reduce",
            pick(
                &red,
                &|k| matches!(Mapping::of(k), Mapping::BlockReduce { threads, .. } if threads > 32),
            ),
            Target::Sm90,
        ),
        (
            "ptx_split_reduce",
            pick(
                &red,
                &|k| matches!(Mapping::of(k), Mapping::BlockReduce { split, .. } if split > 1),
            ),
            Target::Sm90,
        ),
        (
            "ptx_conv_block_gemm",
            pick(&conv, &|k| matches!(k.body, Body::Call(_))),
            Target::Sm90,
        ),
        (
            "ptx_f64_pow",
            pick(&zoo, &|k| {
                let t = k.to_string();
                t.contains("pow") && t.contains("f64")
            }),
            Target::Sm80,
        ),
    ];
    for (name, k, target) in cases {
        let p = ptx::emit(&k, target).unwrap();
        let text = format!(
            "// {name}: PTX of the kernel below (UPDATE_GOLDEN=1 rewrites this file)\n/*\n{k}*/\n{}",
            p.text
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.txt"));
        if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if want != text {
            let diff: Vec<String> = want
                .lines()
                .zip(text.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(10)
                .map(|(i, (a, b))| format!("line {}:\n  - {a}\n  + {b}", i + 1))
                .collect();
            panic!(
                "{name}: PTX differs from {} ({} vs {} lines):\n{}\n(UPDATE_GOLDEN=1 to accept)",
                path.display(),
                want.lines().count(),
                text.lines().count(),
                diff.join("\n")
            );
        }
    }
}

/// The runtime's first call: with the stub libcuda of `scripts/cuda-stub.sh` (CI sets
/// `KILN_CUDA_STUB=1`) it must be a clean "no device" error, not an abort; with a real driver
/// it must find at least one device.
#[cfg(feature = "cuda")]
#[test]
fn runtime_reports_no_device_as_an_error() {
    use kiln_codegen::cuda::runtime;
    let stub = std::env::var("KILN_CUDA_STUB").is_ok_and(|v| v == "1");
    match runtime::device_count() {
        Err(e) if stub => {
            assert!(e.is_no_device(), "{e}");
            assert!(e.to_string().contains("no CUDA-capable device"), "{e}");
        }
        Ok(n) if !stub => assert!(n > 0),
        other => panic!("KILN_CUDA_STUB={stub}, device_count() = {other:?}"),
    }
}

/// Distance in units of the last place between two f64 (0 for two NaNs, `u64::MAX` for one).
fn ulps64(a: f64, b: f64) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    let key = |x: f64| {
        let i = x.to_bits() as i64;
        if i < 0 {
            i128::from(i64::MIN) - i128::from(i)
        } else {
            i128::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs().min(u128::from(u64::MAX)) as u64
}

/// The largest ulp distance between `prog` and `want` over `points`, with the worst point.
fn worst(
    prog: &kiln_codegen::cuda::math::Prog,
    want: &dyn Fn(&[f64]) -> f64,
    points: &[Vec<f64>],
) -> (u64, Vec<f64>, f64, f64) {
    let mut w = (0, Vec::new(), 0.0, 0.0);
    for p in points {
        let (g, r) = (prog.eval(p), want(p));
        let u = ulps64(g, r);
        if u > w.0 || w.1.is_empty() {
            w = (u, p.clone(), g, r);
        }
    }
    w
}

fn specials64() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.0,
        -2.0,
        3.0,
        -3.0,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        1e-310,
        1e-300,
        1e-20,
        -1e-20,
        1e-8,
        0.1,
        0.34657359027997264,
        -0.34657359027997264,
        std::f64::consts::LN_2,
        std::f64::consts::FRAC_1_SQRT_2,
        std::f64::consts::SQRT_2,
        1.0000000000000002,
        0.9999999999999999,
        22.0,
        22.000001,
        -22.000001,
        700.0,
        709.78,
        709.782_712_893_384,
        709.79,
        710.0,
        -708.4,
        -709.0,
        -744.0,
        -745.13,
        -745.2,
        -746.0,
        -1000.0,
        1000.0,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    v.extend(v.clone().iter().map(|x| x * 1.0000001));
    v
}

/// Double-double arithmetic (about 104 bits) for reference values of `tanh` and `sigmoid`,
/// whose glibc versions are themselves up to ~2 ulp off.
mod dd {
    #[derive(Clone, Copy, Debug)]
    pub struct D(pub f64, pub f64);
    fn two_sum(a: f64, b: f64) -> D {
        let s = a + b;
        let bb = s - a;
        D(s, (a - (s - bb)) + (b - bb))
    }
    fn fast(a: f64, b: f64) -> D {
        let s = a + b;
        D(s, b - (s - a))
    }
    pub fn add(a: D, b: D) -> D {
        let s = two_sum(a.0, b.0);
        fast(s.0, s.1 + a.1 + b.1)
    }
    pub fn neg(a: D) -> D {
        D(-a.0, -a.1)
    }
    pub fn mul(a: D, b: D) -> D {
        let p = a.0 * b.0;
        let e = a.0.mul_add(b.0, -p) + a.0 * b.1 + a.1 * b.0;
        fast(p, e)
    }
    pub fn div(a: D, b: D) -> D {
        let q1 = a.0 / b.0;
        let r = add(a, neg(mul(D(q1, 0.0), b)));
        let q2 = r.0 / b.0;
        let r = add(r, neg(mul(D(q2, 0.0), b)));
        let q3 = r.0 / b.0;
        add(fast(q1, q2), D(q3, 0.0))
    }
    /// `exp(x)` for `|x| < 700`: `x = n ln2 + r`, `exp(r / 256)` by its Taylor series, squared
    /// eight times.
    pub fn exp(x: f64) -> D {
        let ln2 = D(std::f64::consts::LN_2, 2.319_046_813_846_299_6e-17);
        let n = (x / ln2.0).round();
        let r = add(D(x, 0.0), neg(mul(D(n, 0.0), ln2)));
        let s = D(r.0 / 256.0, r.1 / 256.0);
        let mut sum = D(1.0, 0.0);
        let mut term = D(1.0, 0.0);
        for k in 1..=20 {
            term = div(mul(term, s), D(f64::from(k), 0.0));
            sum = add(sum, term);
        }
        for _ in 0..8 {
            sum = mul(sum, sum);
        }
        let p = 2f64.powi(n as i32);
        D(sum.0 * p, sum.1 * p)
    }
    pub fn tanh(x: f64) -> f64 {
        if x.abs() < 1e-5 {
            return x - x * x * x / 3.0;
        }
        if x.abs() > 25.0 {
            return x.signum();
        }
        let e = exp(2.0 * x);
        div(add(e, D(-1.0, 0.0)), add(e, D(1.0, 0.0))).0
    }
    pub fn sigmoid(x: f64) -> f64 {
        if x < -700.0 {
            return (-x).exp().recip();
        }
        if x > 40.0 {
            return 1.0;
        }
        div(D(1.0, 0.0), add(D(1.0, 0.0), exp(-x))).0
    }
}

/// f64 `exp`, `log`, `tanh`, `sigmoid` as the PTX computes them ([`kiln_codegen::cuda::math`]
/// evaluated on the host, bit for bit the PTX's IEEE operations) against glibc's, which is
/// itself within about 1 ulp of the exact value: this proves the algorithms and constants, not
/// the GPU's execution.
#[test]
#[allow(clippy::type_complexity)]
fn f64_math_unary_accuracy() {
    use kiln_codegen::cuda::math;
    let mut rng = Rng::new(3);
    let mut pts = |lo: f64, hi: f64, n: usize| -> Vec<Vec<f64>> {
        let mut v: Vec<Vec<f64>> = (0..n)
            .map(|_| vec![lo + (hi - lo) * (rng.unit() + 1.0) / 2.0])
            .collect();
        v.extend(specials64().into_iter().map(|x| vec![x]));
        v
    };
    let cases: Vec<(
        &str,
        math::Prog,
        Box<dyn Fn(&[f64]) -> f64>,
        Vec<Vec<f64>>,
        u64,
    )> = vec![
        (
            "exp",
            math::exp(),
            Box::new(|p| p[0].exp()),
            pts(-750.0, 712.0, 200_000),
            1,
        ),
        (
            "exp small",
            math::exp(),
            Box::new(|p| p[0].exp()),
            pts(-1.0, 1.0, 100_000),
            1,
        ),
        (
            "log",
            math::log(),
            Box::new(|p| p[0].ln()),
            pts(-745.0, 709.0, 200_000)
                .into_iter()
                .map(|p| vec![p[0].exp()])
                .collect(),
            1,
        ),
        (
            "log near 1",
            math::log(),
            Box::new(|p| p[0].ln()),
            pts(0.7, 1.5, 100_000),
            1,
        ),
        (
            "log of anything",
            math::log(),
            Box::new(|p| p[0].ln()),
            pts(-1.0, 1e6, 10_000),
            1,
        ),
        (
            "tanh",
            math::tanh(),
            Box::new(|p| dd::tanh(p[0])),
            pts(-25.0, 25.0, 200_000),
            1,
        ),
        (
            "tanh small",
            math::tanh(),
            Box::new(|p| dd::tanh(p[0])),
            pts(-0.7, 0.7, 100_000),
            1,
        ),
        (
            "tanh vs glibc",
            math::tanh(),
            Box::new(|p| p[0].tanh()),
            pts(-25.0, 25.0, 200_000),
            3,
        ),
        (
            "sigmoid",
            math::sigmoid(),
            Box::new(|p| dd::sigmoid(p[0])),
            pts(-750.0, 40.0, 200_000),
            2,
        ),
    ];
    let mut report = Vec::new();
    for (name, prog, want, points, max) in cases {
        let (u, at, got, exp) = worst(&prog, &*want, &points);
        report.push(format!(
            "{name}: max {u} ulp at {at:?} ({got:e} vs {exp:e})"
        ));
        assert!(
            u <= max,
            "{name}: {u} ulp at {at:?}: {got:e} vs libm {exp:e}"
        );
    }
    eprintln!("f64 PTX math vs libm:\n  {}", report.join("\n  "));
}

/// f64 `pow` as the PTX computes it against glibc's `pow`: random bases and exponents, results
/// near overflow and underflow (where an error in `log x` is multiplied by `|y log x|` ~ 700),
/// negative bases with integer exponents, and every special case (exactly, NaN matching NaN).
#[test]
fn f64_math_pow_accuracy() {
    use kiln_codegen::cuda::math;
    let prog = math::pow();
    let mut rng = Rng::new(5);
    let mut pts: Vec<Vec<f64>> = Vec::new();
    for _ in 0..100_000 {
        let x = ((rng.unit() + 1.0) * 10.0).max(1e-3);
        let y = rng.unit() * 50.0;
        pts.push(vec![x, y]);
    }
    for _ in 0..100_000 {
        // |y log x| close to the limits.
        let x = ((rng.unit() + 1.0) * 1e3).max(1e-300) * 10f64.powi(rng.below(600) as i32 - 300);
        let l = x.ln();
        if l == 0.0 {
            continue;
        }
        let target = rng.unit() * 745.0;
        pts.push(vec![x, target / l]);
    }
    for _ in 0..50_000 {
        let x = 1.0 + rng.unit() * 1e-6;
        let y = rng.unit() * 1e8;
        pts.push(vec![x, y]);
    }
    for _ in 0..50_000 {
        let x = -((rng.unit() + 1.0) * 4.0);
        let y = (rng.below(200) as f64) - 100.0;
        pts.push(vec![x, y]);
    }
    let (u, at, got, want) = worst(&prog, &|p| p[0].powf(p[1]), &pts);
    eprintln!("f64 PTX pow vs libm: max {u} ulp at {at:?} ({got:e} vs {want:e})");
    assert!(u <= 2, "pow: {u} ulp at {at:?}: {got:e} vs libm {want:e}");
    let sp = specials64();
    for &x in &sp {
        for &y in &sp {
            let (g, w) = (prog.eval(&[x, y]), x.powf(y));
            let ok = ulps64(g, w) <= 2 || (g == w);
            assert!(ok, "pow({x:e}, {y:e}) = {g:e}, libm {w:e}");
            if w == 0.0 || w.is_infinite() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "pow({x:e}, {y:e}): sign of {g:e} vs {w:e}"
                );
            }
        }
    }
}

/// `cuobjdump`: `KILN_CUOBJDUMP`, else the `nvidia-cuda-cuobjdump` wheel under `target/`
/// (`pip install --target target/ci-sass nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`: it runs
/// nvdisasm from its own directory), else `PATH`.
fn find_cuobjdump() -> Result<PathBuf, String> {
    let mut cands: Vec<PathBuf> = std::env::var_os("KILN_CUOBJDUMP")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    for sub in ["ci-sass", "ci-ptxas"] {
        let mut stack = vec![target.join(sub)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == "cuobjdump") {
                    cands.push(p);
                }
            }
        }
    }
    cands.push(PathBuf::from("cuobjdump"));
    for c in &cands {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c.clone());
        }
    }
    Err(format!("no cuobjdump among {cands:?}"))
}

/// The SASS of `k` for `target` (ptxas, then `cuobjdump -sass`).
fn sass(ptxas: &PathBuf, cuobjdump: &PathBuf, k: &ptx::PtxKernel) -> String {
    let dir = std::env::temp_dir().join(format!("kiln-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assemble(ptxas, &dir, k).unwrap_or_else(|e| panic!("{}: {e}", k.entry));
    let cubin = dir.join(format!("{}_{}.cubin", k.entry, k.target.name()));
    let o = Command::new(cuobjdump)
        .arg("-sass")
        .arg(&cubin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// How many SASS instructions start with `op` (`FFMA`, `LDS.128`, ...).
fn count_op(sass: &str, op: &str) -> usize {
    sass.lines()
        .filter(|l| {
            l.split(';').next().is_some_and(|ins| {
                ins.split_whitespace()
                    .find(|w| !w.starts_with('/') && !w.starts_with('@'))
                    .is_some_and(|w| w == op || w.starts_with(&format!("{op}.")))
            })
        })
        .count()
}

/// The machine code ptxas makes of the tiled GEMM (sm_80 and sm_90): the f32 kernel's inner
/// loop is `BK * TM * TN` = 256 FFMA fed by 128-bit shared loads (LDS.128) and no spills; the
/// f64 one the same with DFMA; a block reduction uses warp shuffles (SHFL.DOWN) and a barrier.
/// Skipped, with the reason printed, without ptxas or cuobjdump.
#[test]
fn sass_uses_ffma_and_vector_shared_loads() {
    let (ptxas, cuobjdump) = match (find_ptxas(), find_cuobjdump()) {
        (Ok(p), Ok(c)) => (p, c),
        (p, c) => {
            eprintln!(
                "ptx: SASS check SKIPPED: {}",
                [p.err(), c.err()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            return;
        }
    };
    let ks = kernels_of(&gemms());
    let red = kernels_of(&reductions());
    let pick = |ks: &[Kernel], pred: &dyn Fn(&Kernel) -> bool| -> Kernel {
        ks.iter().find(|k| pred(k)).cloned().expect("kernel found")
    };
    let gemm_of = |d: DType| pick(&ks, &|k| matches!(&k.body, Body::Call(c) if c.dtype == d));
    let mut report = Vec::new();
    for target in Target::ALL {
        for (d, fma) in [(DType::F32, "FFMA"), (DType::F64, "DFMA")] {
            let p = ptx::emit(&gemm_of(d), target).unwrap();
            assert!(matches!(p.mapping, Mapping::Gemm { .. }));
            let s = sass(&ptxas, &cuobjdump, &p);
            let (n_fma, n_lds) = (count_op(&s, fma), count_op(&s, "LDS.128"));
            report.push(format!(
                "{} {d} GEMM: {n_fma} {fma}, {n_lds} LDS.128, {} STS, {} LDG",
                target.name(),
                count_op(&s, "STS"),
                count_op(&s, "LDG")
            ));
            assert!(n_fma >= 256, "{}: {n_fma} {fma}\n{s}", p.entry);
            let lds_min = if d == DType::F32 { 32 } else { 64 };
            assert!(n_lds >= lds_min, "{}: {n_lds} LDS.128\n{s}", p.entry);
            assert_eq!(count_op(&s, "STL"), 0, "{}: spills\n{s}", p.entry);
        }
        let k = pick(
            &red,
            &|k| matches!(Mapping::of(k), Mapping::BlockReduce { threads, .. } if threads > 32),
        );
        let p = ptx::emit(&k, target).unwrap();
        let s = sass(&ptxas, &cuobjdump, &p);
        assert!(count_op(&s, "SHFL") >= 10, "{}: no shuffles\n{s}", p.entry);
        assert!(count_op(&s, "BAR") >= 2, "{}: no barrier\n{s}", p.entry);
        report.push(format!(
            "{} block reduction: {} SHFL, {} BAR",
            target.name(),
            count_op(&s, "SHFL"),
            count_op(&s, "BAR")
        ));
    }
    // The opt-in TF32 path: tensor-core HMMA instructions (2 x 2 m16n8k8 per 8-deep slice).
    let f32_gemm = gemm_of(DType::F32);
    for target in Target::ALL {
        let p = ptx::emit_with(&f32_gemm, target, ptx::Options { allow_tf32: true }).unwrap();
        let s = sass(&ptxas, &cuobjdump, &p);
        let hmma = count_op(&s, "HMMA");
        assert!(hmma >= 8, "{}: {hmma} HMMA\n{s}", p.entry);
        assert_eq!(count_op(&s, "STL"), 0, "{}: spills\n{s}", p.entry);
        report.push(format!(
            "{} f32 GEMM, TF32 opt-in: {hmma} HMMA ({})",
            target.name(),
            s.lines()
                .find(|l| l.contains("HMMA"))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with("HMMA")))
                .unwrap_or("")
        ));
    }
    // An elementwise f32 kernel with 4 elements per thread: 128-bit global loads and stores.
    let k = pick(&red, &|k| {
        matches!(Mapping::of(k), Mapping::GridStride { vector: 4, .. })
    });
    for target in Target::ALL {
        let p = ptx::emit(&k, target).unwrap();
        let s = sass(&ptxas, &cuobjdump, &p);
        let ldg: usize = s
            .lines()
            .filter(|l| l.contains("LDG.E.128") || l.contains("LDG.E.ENL2.256"))
            .count();
        let stg = s.lines().filter(|l| l.contains("STG.E.128")).count();
        assert!(
            ldg >= 1 && stg >= 1,
            "{}: {ldg} LDG.E.128, {stg} STG.E.128\n{s}",
            p.entry
        );
        report.push(format!(
            "{} {} (v4 elementwise): {ldg} LDG.E.128, {stg} STG.E.128",
            target.name(),
            k.name
        ));
    }
    eprintln!("ptx: SASS:\n  {}", report.join("\n  "));
}

/// The emitter's division by a constant (`ptx::magic`: multiply and shift) is exact for every
/// dividend below 2^31: divisors up to 5000 and near 2^31, dividends at and around multiples,
/// at the top of the range, and random.
#[test]
fn magic_division_is_exact() {
    let mut rng = Rng::new(9);
    let mut divisors: Vec<u64> = (3..5000).collect();
    divisors.extend([(1 << 31) - 1, (1 << 31) - 3, 1_000_003, 65_537, 123_456_789]);
    for d in divisors.into_iter().filter(|d| !d.is_power_of_two()) {
        let (m, k) = ptx::magic(d);
        let mut xs: Vec<u64> = vec![0, 1, d - 1, d, d + 1, (1 << 31) - 1, (1 << 31) - 2];
        let top = ((1u64 << 31) - 1) / d;
        for q in [1, 2, top / 2, top.saturating_sub(1), top] {
            xs.extend([(q * d).saturating_sub(1), q * d, q * d + 1]);
        }
        xs.extend((0..64).map(|_| rng.next_u64() % (1 << 31)));
        for x in xs.into_iter().filter(|&x| x < 1 << 31) {
            assert_eq!(x.wrapping_mul(m) >> k, x / d, "{x} / {d} with ({m}, {k})");
        }
    }
}
