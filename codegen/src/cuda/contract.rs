//! Contractions as kernel IR loop nests, for the GPU.
//!
//! On the CPU a contraction ([`Call`]) is a library GEMM; the GPU has no such library here, so
//! [`as_loops`] writes each one as an ordinary loop nest of the kernel IR: the output's
//! indices as the (parallel, collapsed) outer loops, one thread per output element, and the
//! contracted indices as a sequential inner loop accumulating `a * b` in the element type.
//! Padding and the stride holes of a transposed convolution are guards on the loads
//! (`inrange`), so no access leaves its buffer. The same PTX emitter, mapping tests and
//! interpreter then apply to contractions as to every other kernel. This is the simple first
//! lowering; a tiled shared-memory kernel is the next step for speed.
//!
//! The index relation is the one of `cpu::naive`: for the convolution family
//! `y[n, co, o] += x[n, ci, o*s + k*d - p] * w[co, ci - g*(C/G), k]` with `co` and `ci` in
//! one group `g`.

use super::ptx::EmitError;
use crate::kernel::{
    Acc, AccDecl, Body, Call, Contraction, DType, Ix, KOp, Kernel, Loop, ReduceOp, Stmt, Val, Var,
};
use kiln_ir::shape::strides;

/// `k` with a contraction body rewritten as a loop nest; `None` if `k` is already one.
pub fn as_loops(k: &Kernel) -> Result<Option<Kernel>, EmitError> {
    let Body::Call(c) = &k.body else {
        return Ok(None);
    };
    let mut b = Builder {
        vars: Vec::new(),
        vals: Vec::new(),
    };
    let body = b.contraction(k, c)?;
    Ok(Some(Kernel {
        name: k.name.clone(),
        params: k.params.clone(),
        vals: b.vals,
        defs: vec![None; b.vars.len()],
        vars: b.vars,
        accs: vec![AccDecl {
            op: ReduceOp::Sum,
            dtype: c.dtype,
        }],
        body: Body::Loops(body),
    }))
}

struct Builder {
    vars: Vec<u64>,
    vals: Vec<DType>,
}

/// How to address the two operands and the result from the output (`p`) and contracted
/// (`r`) variables, and the conditions `lo <= index < hi` under which operand `a` is inside.
struct Access3 {
    a: Ix,
    b: Ix,
    out: Ix,
    guards: Vec<(Ix, i64, i64)>,
}

fn c64(x: usize) -> i64 {
    x as i64
}

/// `Σ idx[j] * strides(shape)[j]`.
fn offset(idx: &[Ix], shape: &[usize]) -> Ix {
    let st = strides(shape);
    idx.iter()
        .zip(st)
        .fold(Ix::constant(0), |acc, (i, s)| acc.add(&i.scale(c64(s))))
}

impl Builder {
    fn var(&mut self, extent: usize) -> Var {
        self.vars.push(extent as u64);
        Var(self.vars.len() as u32 - 1)
    }

    fn val(&mut self, out: &mut Vec<Stmt>, d: DType, op: KOp) -> Val {
        self.vals.push(d);
        let v = Val(self.vals.len() as u32 - 1);
        out.push(Stmt::Let(v, op));
        v
    }

    fn contraction(&mut self, k: &Kernel, c: &Call) -> Result<Vec<Stmt>, EmitError> {
        let bad = |what: String| EmitError::Invalid {
            kernel: k.name.clone(),
            what,
        };
        let (pv, rv, acc) = match &c.op {
            Contraction::MatMul { batch, m, k: kk, n } => {
                let p = [self.var(*batch), self.var(*m), self.var(*n)];
                let r = [self.var(*kk)];
                let (t, i, j, q) = (Ix::var(p[0]), Ix::var(p[1]), Ix::var(p[2]), Ix::var(r[0]));
                let row = t.scale(c64(*m)).add(&i);
                let acc = Access3 {
                    a: row.scale(c64(*kk)).add(&q),
                    b: t.scale(c64(*kk)).add(&q).scale(c64(*n)).add(&j),
                    out: row.scale(c64(*n)).add(&j),
                    guards: Vec::new(),
                };
                (p.to_vec(), r.to_vec(), acc)
            }
            Contraction::Conv { x, w, y, params }
            | Contraction::ConvWeight {
                x,
                dw: w,
                dy: y,
                params,
            } => {
                let weight = matches!(c.op, Contraction::ConvWeight { .. });
                let nd = x.len().saturating_sub(2);
                if y.len() != nd + 2 || w.len() != nd + 2 || params.groups == 0 {
                    return Err(bad(format!("malformed {}", c.op)));
                }
                let (ch, o_ch, groups) = (x[1], y[1], params.groups);
                let (cg, og) = (ch / groups, o_ch / groups.max(1));
                // Variables: output position of y, tap k, batch n, output channel o, channel c.
                let n = self.var(x[0]);
                let o = self.var(o_ch);
                let cc = self.var(cg);
                let ys: Vec<Var> = y[2..].iter().map(|&e| self.var(e)).collect();
                let ks: Vec<Var> = w[2..].iter().map(|&e| self.var(e)).collect();
                let (p, r) = if weight {
                    let mut p = vec![o, cc];
                    p.extend(&ks);
                    let mut r = vec![n];
                    r.extend(&ys);
                    (p, r)
                } else {
                    let mut p = vec![n, o];
                    p.extend(&ys);
                    let mut r = vec![cc];
                    r.extend(&ks);
                    (p, r)
                };
                let ext = self.vars.clone();
                let g = Ix::var(o).div(c64(og.max(1)), &ext);
                let ci = g.scale(c64(cg)).add(&Ix::var(cc));
                let mut guards = Vec::new();
                let mut pos = Vec::new();
                for j in 0..nd {
                    let e = Ix::var(ys[j])
                        .scale(c64(params.stride[j]))
                        .add(&Ix::var(ks[j]).scale(c64(params.dilation[j])))
                        .add_const(-c64(params.padding[j]));
                    let (lo, hi) = e.range(&ext);
                    if lo < 0 || hi >= c64(x[2 + j]) {
                        guards.push((e.clone(), 0, c64(x[2 + j])));
                    }
                    pos.push(e);
                }
                let x_idx = Ix::var(n).scale(c64(ch)).add(&ci);
                let mut xi = vec![x_idx];
                xi.extend(pos);
                let x_off = offset(
                    &xi,
                    &[x[0] * ch]
                        .iter()
                        .copied()
                        .chain(x[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut yi = vec![Ix::var(n).scale(c64(o_ch)).add(&Ix::var(o))];
                yi.extend(ys.iter().map(|&v| Ix::var(v)));
                let y_off = offset(
                    &yi,
                    &[x[0] * o_ch]
                        .iter()
                        .copied()
                        .chain(y[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut wi = vec![Ix::var(o).scale(c64(cg)).add(&Ix::var(cc))];
                wi.extend(ks.iter().map(|&v| Ix::var(v)));
                let w_off = offset(
                    &wi,
                    &[o_ch * cg]
                        .iter()
                        .copied()
                        .chain(w[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let acc = if weight {
                    Access3 {
                        a: x_off,
                        b: y_off,
                        out: w_off,
                        guards,
                    }
                } else {
                    Access3 {
                        a: x_off,
                        b: w_off,
                        out: y_off,
                        guards,
                    }
                };
                (p, r, acc)
            }
            Contraction::ConvTranspose { x, w, y, params } => {
                // x [N, Cin, X...] (operand), w [Cin, Cout/G, K...], y [N, Cout, Y...].
                let nd = x.len().saturating_sub(2);
                if y.len() != nd + 2 || w.len() != nd + 2 || params.groups == 0 {
                    return Err(bad(format!("malformed {}", c.op)));
                }
                let (cin, cout, groups) = (x[1], y[1], params.groups);
                let (cin_g, cout_g) = (cin / groups, cout / groups);
                let n = self.var(y[0]);
                let co = self.var(cout);
                let ys: Vec<Var> = y[2..].iter().map(|&e| self.var(e)).collect();
                let cc = self.var(cin_g);
                let ks: Vec<Var> = w[2..].iter().map(|&e| self.var(e)).collect();
                let mut p = vec![n, co];
                p.extend(&ys);
                let mut r = vec![cc];
                r.extend(&ks);
                let ext = self.vars.clone();
                let g = Ix::var(co).div(c64(cout_g.max(1)), &ext);
                let cl = Ix::var(co).rem(c64(cout_g.max(1)), &ext);
                let ci = g.scale(c64(cin_g)).add(&Ix::var(cc));
                let mut guards = Vec::new();
                let mut xs = Vec::new();
                for j in 0..nd {
                    let s = c64(params.stride[j].max(1));
                    // out = o*s + k*d - p, so o = (out + p - k*d) / s where that divides.
                    let t = Ix::var(ys[j])
                        .add(&Ix::var(ks[j]).scale(-c64(params.dilation[j])))
                        .add_const(c64(params.padding[j]));
                    guards.push((t.clone(), 0, s * c64(x[2 + j])));
                    if s > 1 {
                        guards.push((t.rem(s, &ext), 0, 1));
                    }
                    xs.push(t.div(s, &ext));
                }
                let mut xi = vec![Ix::var(n).scale(c64(cin)).add(&ci)];
                xi.extend(xs);
                let x_off = offset(
                    &xi,
                    &[x[0] * cin]
                        .iter()
                        .copied()
                        .chain(x[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut wi = vec![ci.scale(c64(cout_g)).add(&cl)];
                wi.extend(ks.iter().map(|&v| Ix::var(v)));
                let w_off = offset(
                    &wi,
                    &[cin * cout_g]
                        .iter()
                        .copied()
                        .chain(w[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut yi = vec![Ix::var(n).scale(c64(cout)).add(&Ix::var(co))];
                yi.extend(ys.iter().map(|&v| Ix::var(v)));
                let y_off = offset(
                    &yi,
                    &[y[0] * cout]
                        .iter()
                        .copied()
                        .chain(y[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                (
                    p,
                    r,
                    Access3 {
                        a: x_off,
                        b: w_off,
                        out: y_off,
                        guards,
                    },
                )
            }
        };
        Ok(self.nest(c, &pv, &rv, acc))
    }

    /// `for p.. { acc = 0; for r.. { acc += a[..] * b[..] }; out[..] = acc }`.
    fn nest(&mut self, c: &Call, p: &[Var], r: &[Var], acc: Access3) -> Vec<Stmt> {
        let d = c.dtype;
        let mut inner = Vec::new();
        let mut guard: Option<Val> = None;
        for (e, lo, hi) in &acc.guards {
            let g = self.val(
                &mut inner,
                DType::Bool,
                KOp::InRange {
                    index: e.clone(),
                    lo: *lo,
                    hi: *hi,
                },
            );
            guard = Some(match guard {
                None => g,
                Some(prev) => self.val(&mut inner, DType::Bool, KOp::And(prev, g)),
            });
        }
        let va = self.val(
            &mut inner,
            d,
            KOp::Load {
                buf: c.inputs[0],
                index: acc.a,
                guard,
            },
        );
        // Only `a` needs the guard: `b` (a weight or an output gradient) is always inside, and
        // a zero `a` zeroes the term.
        let vb = self.val(
            &mut inner,
            d,
            KOp::Load {
                buf: c.inputs[1],
                index: acc.b,
                guard: None,
            },
        );
        let prod = self.val(
            &mut inner,
            d,
            KOp::Binary(crate::kernel::BinaryOp::Mul, va, vb),
        );
        inner.push(Stmt::AccUpdate(Acc(0), prod));
        let mut per_out = vec![Stmt::AccInit(Acc(0))];
        per_out.extend(self.wrap(r, inner, false));
        let v = self.val(&mut per_out, d, KOp::ReadAcc(Acc(0)));
        per_out.push(Stmt::Store {
            buf: c.output,
            index: acc.out,
            value: v,
        });
        self.wrap(p, per_out, true)
    }

    fn wrap(&self, vars: &[Var], body: Vec<Stmt>, parallel: bool) -> Vec<Stmt> {
        let mut body = body;
        for (n, &v) in vars.iter().enumerate().rev() {
            body = vec![Stmt::Loop(Loop {
                var: v,
                extent: self.vars[v.0 as usize],
                parallel: parallel && n == 0,
                vector: 1,
                body,
            })];
        }
        body
    }
}
