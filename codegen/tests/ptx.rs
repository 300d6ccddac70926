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
            let binary: &[BinaryOp] = if d.is_float() {
                &[
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Div,
                    BinaryOp::Max,
                    BinaryOp::Min,
                    BinaryOp::Pow,
                ]
            } else {
                &[
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Max,
                    BinaryOp::Min,
                ]
            };
            for &op in binary {
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
    ]
}

/// What the emitter does not lower yet: the f64 transcendental functions (see the module
/// documentation of `cuda::ptx`). Anything else failing is a bug.
fn expected_unsupported(e: &EmitError) -> bool {
    match e {
        EmitError::Invalid { .. } => false,
        EmitError::Unsupported { what, .. } => {
            what.ends_with("on f64")
                && ["exp", "log", "tanh", "sigmoid", "pow"]
                    .iter()
                    .any(|f| what.starts_with(&format!("{f} ")))
        }
    }
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
                if let Some(px) = &ptxas {
                    match assemble(px, &dir, &p) {
                        Ok(()) => validated += 1,
                        Err(msg) => failures.push(format!(
                            "{suite}/{} ({}): ptxas: {msg}\n{}",
                            k.name,
                            target.name(),
                            p.text
                        )),
                    }
                }
            }
        }
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

#[test]
fn thread_mapping_covers_every_element_once() {
    let mut checked = 0;
    for (suite, kernels) in suites() {
        if suite == "lenet_step" {
            // Same kernel shapes as the others at a size that makes this slow.
            continue;
        }
        for k in &kernels {
            let (grid, block) = Mapping::of(k).launch(ptx::MAX_GRID);
            // The real launch, a small grid that makes threads stride, and one block of one
            // warp.
            for (g, b) in [(grid, block), (3, 32), (1, 32)] {
                if let Err(e) = check_mapping(k, g, b) {
                    panic!("{suite}/{} with {g}x{b} threads: {e}\n{k}", k.name);
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} kernels checked");
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
