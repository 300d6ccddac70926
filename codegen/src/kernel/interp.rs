//! A bounds-checked interpreter of the kernel IR, for tests.
//!
//! It runs a kernel over host buffers ([`Data`]) with the scalar semantics the JIT
//! implements (f32 arithmetic in f32, NaN-propagating `max`/`min`, wrapping `i64`, Rust `as`
//! casts), and checks every access: an index outside its buffer, or a guarded load whose guard
//! holds but whose index is outside, is an error instead of a silent clamp. Running the
//! scheduler's kernels here against the graph interpreter tests the scheduler independently of
//! the JIT.

use super::*;
use kiln_ir::Data;

/// Runs `k` over `bufs` (one per parameter, in order).
pub fn run(k: &Kernel, bufs: &mut [Data]) -> Result<(), String> {
    if bufs.len() != k.params.len() {
        return Err(format!(
            "kernel {} takes {} buffers, got {}",
            k.name,
            k.params.len(),
            bufs.len()
        ));
    }
    for (i, (p, b)) in k.params.iter().zip(bufs.iter()).enumerate() {
        if p.dtype != b.dtype() || (b.len() as u64) < p.len {
            return Err(format!(
                "kernel {}: buffer b{i} is {} x {}, expected {} x {}",
                k.name,
                b.dtype(),
                b.len(),
                p.dtype,
                p.len
            ));
        }
    }
    match &k.body {
        Body::Loops(stmts) => run_stmts(k, stmts, bufs, &mut Frame::new(k)),
        Body::Call(c) => {
            let mut out = std::mem::replace(&mut bufs[c.output.0 as usize], Data::Bool(vec![]));
            let r = crate::cpu::naive::run(
                &c.op,
                &bufs[c.inputs[0].0 as usize],
                &bufs[c.inputs[1].0 as usize],
                &mut out,
            );
            bufs[c.output.0 as usize] = out;
            r
        }
    }
}

/// The state of a run between statements: loop and derived variables, values and
/// accumulators. With [`run_stmts`] a test can run pieces of a kernel the way GPU threads do
/// (each thread its own frame, accumulators combined between pieces).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub vars: Vec<i64>,
    pub vals: Vec<Scalar>,
    pub accs: Vec<Scalar>,
}

impl Frame {
    /// Variables 0, values unset, accumulators at their identities.
    pub fn new(k: &Kernel) -> Frame {
        Frame {
            vars: vec![0; k.vars.len()],
            vals: vec![Scalar::Bool(false); k.vals.len()],
            accs: k
                .accs
                .iter()
                .map(|a| Scalar::identity(a.op, a.dtype))
                .collect(),
        }
    }
}

/// Runs `stmts`, a part of `k`'s loop body, over `bufs` from `frame` (bounds-checked as
/// [`run`]), leaving the final state in `frame`.
pub fn run_stmts(
    k: &Kernel,
    stmts: &[Stmt],
    bufs: &mut [Data],
    frame: &mut Frame,
) -> Result<(), String> {
    let mut st = State {
        k,
        vars: std::mem::take(&mut frame.vars),
        vals: std::mem::take(&mut frame.vals),
        accs: std::mem::take(&mut frame.accs),
    };
    let r = st.stmts(stmts, bufs);
    frame.vars = st.vars;
    frame.vals = st.vals;
    frame.accs = st.accs;
    r
}

struct State<'a> {
    k: &'a Kernel,
    vars: Vec<i64>,
    vals: Vec<Scalar>,
    accs: Vec<Scalar>,
}

fn get(d: &Data, i: i64) -> Option<Scalar> {
    let i = usize::try_from(i).ok()?;
    Some(match d {
        Data::F32(v) => Scalar::F32(*v.get(i)?),
        Data::F64(v) => Scalar::F64(*v.get(i)?),
        Data::I64(v) => Scalar::I64(*v.get(i)?),
        Data::Bool(v) => Scalar::Bool(*v.get(i)?),
    })
}

fn set(d: &mut Data, i: i64, s: Scalar) -> Option<()> {
    let i = usize::try_from(i).ok()?;
    match (d, s) {
        (Data::F32(v), Scalar::F32(x)) => *v.get_mut(i)? = x,
        (Data::F64(v), Scalar::F64(x)) => *v.get_mut(i)? = x,
        (Data::I64(v), Scalar::I64(x)) => *v.get_mut(i)? = x,
        (Data::Bool(v), Scalar::Bool(x)) => *v.get_mut(i)? = x,
        _ => return None,
    }
    Some(())
}

impl State<'_> {
    fn stmts(&mut self, stmts: &[Stmt], bufs: &mut [Data]) -> Result<(), String> {
        for s in stmts {
            match s {
                Stmt::Loop(l) => {
                    for i in 0..l.extent {
                        self.vars[l.var.0 as usize] = i as i64;
                        self.stmts(&l.body, bufs)?;
                    }
                }
                Stmt::Let(v, op) => {
                    let x = self.op(op, bufs)?;
                    self.vals[v.0 as usize] = x;
                }
                Stmt::Store { buf, index, value } => {
                    let i = index.eval(&self.vars, &self.k.defs);
                    let x = self.vals[value.0 as usize];
                    set(&mut bufs[buf.0 as usize], i, x).ok_or_else(|| {
                        format!(
                            "kernel {}: store {buf}[{index}] = {i} out of bounds (vars {:?})",
                            self.k.name, self.vars
                        )
                    })?;
                }
                Stmt::AccInit(a) => {
                    let d = self.k.accs[a.0 as usize];
                    self.accs[a.0 as usize] = Scalar::identity(d.op, d.dtype);
                }
                Stmt::AccUpdate(a, v) => {
                    let d = self.k.accs[a.0 as usize];
                    let cur = self.accs[a.0 as usize];
                    let x = self.vals[v.0 as usize];
                    let op = match d.op {
                        ReduceOp::Sum => BinaryOp::Add,
                        ReduceOp::Max => BinaryOp::Max,
                    };
                    self.accs[a.0 as usize] = binary(op, cur, x)?;
                }
            }
        }
        Ok(())
    }

    fn val(&self, v: Val) -> Scalar {
        self.vals[v.0 as usize]
    }

    fn op(&self, op: &KOp, bufs: &[Data]) -> Result<Scalar, String> {
        Ok(match op {
            KOp::Const(s) => *s,
            KOp::Load { buf, index, guard } => {
                let p = &self.k.params[buf.0 as usize];
                if let Some(g) = guard {
                    if self.val(*g) == Scalar::Bool(false) {
                        return Ok(Scalar::from_f64(p.dtype, 0.0));
                    }
                }
                let i = index.eval(&self.vars, &self.k.defs);
                if i < 0 || i as u64 >= p.len {
                    return Err(format!(
                        "kernel {}: load {buf}[{index}] = {i} outside 0..{} (vars {:?})",
                        self.k.name, p.len, self.vars
                    ));
                }
                get(&bufs[buf.0 as usize], i).ok_or_else(|| {
                    format!("kernel {}: load {buf}[{i}] out of bounds", self.k.name)
                })?
            }
            KOp::Unary(u, a) => unary(*u, self.val(*a))?,
            KOp::Binary(b, x, y) => binary(*b, self.val(*x), self.val(*y))?,
            KOp::Compare(c, x, y) => Scalar::Bool(compare(*c, self.val(*x), self.val(*y))?),
            KOp::Select(c, x, y) => match self.val(*c) {
                Scalar::Bool(true) => self.val(*x),
                Scalar::Bool(false) => self.val(*y),
                other => return Err(format!("select on {other:?}")),
            },
            KOp::Cast(d, x) => cast(*d, self.val(*x)),
            KOp::InRange { index, lo, hi } => {
                let i = index.eval(&self.vars, &self.k.defs);
                Scalar::Bool(*lo <= i && i < *hi)
            }
            KOp::And(x, y) => match (self.val(*x), self.val(*y)) {
                (Scalar::Bool(a), Scalar::Bool(b)) => Scalar::Bool(a && b),
                other => return Err(format!("and on {other:?}")),
            },
            KOp::ReadAcc(a) => self.accs[a.0 as usize],
        })
    }
}

/// `torch.maximum` semantics: NaN if either is NaN.
fn fmax<T: PartialOrd + Copy>(x: T, y: T, nan: impl Fn(T) -> bool) -> T {
    if nan(x) {
        x
    } else if nan(y) || y > x {
        y
    } else {
        x
    }
}

fn fmin<T: PartialOrd + Copy>(x: T, y: T, nan: impl Fn(T) -> bool) -> T {
    if nan(x) {
        x
    } else if nan(y) || y < x {
        y
    } else {
        x
    }
}

/// A unary op on a scalar, as the JIT computes it (up to the accuracy of its `exp`, `log`
/// and `tanh` approximations).
pub fn unary(u: UnaryOp, a: Scalar) -> Result<Scalar, String> {
    Ok(match a {
        Scalar::F32(x) => Scalar::F32(match u {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }),
        Scalar::F64(x) => Scalar::F64(match u {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }),
        Scalar::I64(x) => Scalar::I64(match u {
            UnaryOp::Neg => x.wrapping_neg(),
            UnaryOp::Abs => x.wrapping_abs(),
            _ => return Err(format!("{u:?} on i64")),
        }),
        Scalar::Bool(_) => return Err(format!("{u:?} on bool")),
    })
}

/// A binary op on scalars of one type.
pub fn binary(b: BinaryOp, x: Scalar, y: Scalar) -> Result<Scalar, String> {
    Ok(match (x, y) {
        (Scalar::F32(x), Scalar::F32(y)) => Scalar::F32(match b {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Max => fmax(x, y, f32::is_nan),
            BinaryOp::Min => fmin(x, y, f32::is_nan),
            BinaryOp::Pow => f64::from(x).powf(f64::from(y)) as f32,
        }),
        (Scalar::F64(x), Scalar::F64(y)) => Scalar::F64(match b {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Max => fmax(x, y, f64::is_nan),
            BinaryOp::Min => fmin(x, y, f64::is_nan),
            BinaryOp::Pow => x.powf(y),
        }),
        (Scalar::I64(x), Scalar::I64(y)) => Scalar::I64(match b {
            BinaryOp::Add => x.wrapping_add(y),
            BinaryOp::Sub => x.wrapping_sub(y),
            BinaryOp::Mul => x.wrapping_mul(y),
            BinaryOp::Max => x.max(y),
            BinaryOp::Min => x.min(y),
            BinaryOp::Div | BinaryOp::Pow => return Err(format!("{b:?} on i64")),
        }),
        other => return Err(format!("{b:?} on {other:?}")),
    })
}

fn cmp<T: PartialOrd>(c: CmpOp, x: T, y: T) -> bool {
    match c {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
    }
}

/// A comparison of scalars of one type (IEEE for floats, `false < true`).
pub fn compare(c: CmpOp, x: Scalar, y: Scalar) -> Result<bool, String> {
    Ok(match (x, y) {
        (Scalar::F32(x), Scalar::F32(y)) => cmp(c, x, y),
        (Scalar::F64(x), Scalar::F64(y)) => cmp(c, x, y),
        (Scalar::I64(x), Scalar::I64(y)) => cmp(c, x, y),
        (Scalar::Bool(x), Scalar::Bool(y)) => cmp(c, x, y),
        other => return Err(format!("{c:?} on {other:?}")),
    })
}

/// `kiln_ir::Data::cast` on one element.
pub fn cast(d: DType, x: Scalar) -> Scalar {
    let wide = match x {
        Scalar::F32(v) => f64::from(v),
        Scalar::F64(v) => v,
        Scalar::I64(v) => v as f64,
        Scalar::Bool(v) => v as u8 as f64,
    };
    match (x, d) {
        (_, _) if x.dtype() == d => x,
        (Scalar::I64(v), DType::F32) => Scalar::F32(v as f32),
        (Scalar::I64(v), DType::F64) => Scalar::F64(v as f64),
        (Scalar::I64(v), DType::Bool) => Scalar::Bool(v != 0),
        (Scalar::F32(v), DType::I64) => Scalar::I64(v as i64),
        (Scalar::F64(v), DType::I64) => Scalar::I64(v as i64),
        (Scalar::Bool(v), DType::I64) => Scalar::I64(v as i64),
        (_, DType::F32) => Scalar::F32(wide as f32),
        (_, DType::F64) => Scalar::F64(wide),
        (_, DType::Bool) => Scalar::Bool(wide != 0.0),
        (_, DType::I64) => Scalar::I64(wide as i64),
    }
}
