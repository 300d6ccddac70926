//! f64 `exp`, `log`, `tanh`, `sigmoid` and `pow` for the PTX emitter, written once as
//! straight-line programs ([`Prog`]) that are both printed as PTX ([`super::ptx`] does, one
//! instruction per [`MOp`]) and evaluated here in Rust ([`Prog::eval`], bit for bit what the
//! PTX computes: every float operation is a correctly rounded `add.rn`/`mul.rn`/`fma.rn`/
//! `div.rn`, so `ptxas` may not contract or reorder them). The accuracy tests
//! (`codegen/tests/ptx.rs`, `f64_math_*`) run [`Prog::eval`] over sweeps and special values and
//! compare with the host's libm: they prove the algorithm and the constants; that each
//! [`MOp`] becomes the PTX instruction with the same IEEE semantics is by construction
//! (a one-line table in `ptx.rs`) and checked by `ptxas`, not by a GPU run.
//!
//! PTX has no f64 transcendental instructions (CUDA's libdevice implements them in software),
//! so these are range-reduced polynomials:
//! - `exp(x)`: `n = rint(x log2 e)`, `r = x - n ln2` with `ln2` split in a 32-bit head (exact
//!   products) and a tail, a degree-13 Taylor polynomial on `|r| <= ln2/2` (truncation below
//!   2^-57 relative), scaled by `2^n` in two exact halves so subnormal results round once.
//! - `log(x)`: `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))`, `s = (m-1)/(m+1)` in
//!   double-double, `log m = 2 atanh s` (the `2s + 2s^3/3` head in double-double, the tail
//!   `s^5 Q(s^2)` to `s^25` in double), plus `e ln2` in double-double: a double-double result
//!   good to about 2^-63 relative. `log` rounds it (within ~0.5 ulp); `pow` uses all of it.
//! - `pow(x, y)`: `exp(y log|x|)` with the product formed exactly (`fma`) from the
//!   double-double log and its low part folded into the reduced argument of `exp`, so the
//!   error does not grow with `|y log x|`; then the special cases of C's `pow` (and Rust's
//!   `powf`): `x^0 = 1`, `1^y = 1`, negative `x` with odd integer `y` negative, with
//!   non-integer `y` NaN, zeros and infinities.
//! - `tanh(x) = sign(x) e/(e+2)` with `e = expm1(2|x|)` (the `expm1` polynomial has no `1 +`
//!   to cancel; below `2|x| < 1.1` it is a Taylor polynomial of `2|x|` itself, above it the
//!   reduction of `exp`), 1 beyond `|x| > 22`.
//! - `sigmoid(x) = 1/(1 + exp(-x))`, as the interpreter and PyTorch compute it.
//!
//! Measured against glibc (itself within ~1 ulp): see the tests; `exp`, `log` and `pow` are
//! within 1 ulp on the sweeps, `tanh` and `sigmoid` within 2.

/// A value of a [`Prog`]: the index of the operation that defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V(pub u32);

/// A comparison of [`MOp::FCmp`] / [`MOp::ICmp`] (PTX `setp`): ordered except `Ne` (`neu`, as
/// Rust's `!=`) and `Nan` (either operand NaN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Nan,
}

/// One operation of a [`Prog`]; `F*` make f64, `I*` s64, `P*`/`*Cmp` predicates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MOp {
    /// Input `n` of the program (an f64).
    Input(u32),
    FConst(f64),
    FAdd(V, V),
    FSub(V, V),
    FMul(V, V),
    /// `a * b + c` rounded once.
    FFma(V, V, V),
    FDiv(V, V),
    /// Round to the nearest integer, ties to even (`cvt.rni.f64.f64`).
    FRint(V),
    FAbs(V),
    FNeg(V),
    /// PTX `min.f64`/`max.f64`: a NaN operand gives the other one (Rust's `f64::min`/`max`).
    FMin(V, V),
    FMax(V, V),
    /// `p ? a : b`.
    FSel(V, V, V),
    /// The f64 with these bits.
    FFromBits(V),
    IConst(i64),
    IAdd(V, V),
    ISub(V, V),
    /// Arithmetic shift right by a constant.
    IShr(V, u32),
    IShl(V, u32),
    IAnd(V, V),
    IOr(V, V),
    /// The bits of an f64.
    IBits(V),
    /// Round an f64 to the nearest s64, ties to even, saturating (`cvt.rni.s64.f64`).
    IFromF(V),
    /// An s64 converted to f64 (`cvt.rn.f64.s64`).
    FFromI(V),
    ISel(V, V, V),
    FCmp(Cmp, V, V),
    ICmp(Cmp, V, V),
    PAnd(V, V),
    POr(V, V),
    PNot(V),
}

/// The register kind a [`MOp`] defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F64,
    S64,
    Pred,
}

impl MOp {
    pub fn kind(&self) -> Kind {
        use MOp::*;
        match self {
            IConst(_) | IAdd(..) | ISub(..) | IShr(..) | IShl(..) | IAnd(..) | IOr(..)
            | IBits(_) | IFromF(_) | ISel(..) => Kind::S64,
            FCmp(..) | ICmp(..) | PAnd(..) | POr(..) | PNot(_) => Kind::Pred,
            _ => Kind::F64,
        }
    }
}

/// A straight-line program over f64, s64 and predicate registers, with one f64 result.
#[derive(Clone, Debug, PartialEq)]
pub struct Prog {
    pub ops: Vec<MOp>,
    pub out: V,
}

/// A value while evaluating a [`Prog`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum X {
    F(f64),
    I(i64),
    P(bool),
}

impl Prog {
    /// Runs the program on the host with PTX's semantics for each operation.
    pub fn eval(&self, inputs: &[f64]) -> f64 {
        let mut x: Vec<X> = Vec::with_capacity(self.ops.len());
        let f = |x: &[X], v: V| match x[v.0 as usize] {
            X::F(a) => a,
            other => panic!("{v:?} is {other:?}, not f64"),
        };
        let i = |x: &[X], v: V| match x[v.0 as usize] {
            X::I(a) => a,
            other => panic!("{v:?} is {other:?}, not s64"),
        };
        let p = |x: &[X], v: V| match x[v.0 as usize] {
            X::P(a) => a,
            other => panic!("{v:?} is {other:?}, not pred"),
        };
        fn cmp<T: PartialOrd>(c: Cmp, a: T, b: T) -> bool {
            match c {
                Cmp::Lt => a < b,
                Cmp::Le => a <= b,
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
                Cmp::Nan => a.partial_cmp(&b).is_none(),
            }
        }
        for op in &self.ops {
            use MOp::*;
            let v = match *op {
                Input(n) => X::F(inputs[n as usize]),
                FConst(c) => X::F(c),
                FAdd(a, b) => X::F(f(&x, a) + f(&x, b)),
                FSub(a, b) => X::F(f(&x, a) - f(&x, b)),
                FMul(a, b) => X::F(f(&x, a) * f(&x, b)),
                FFma(a, b, c) => X::F(f(&x, a).mul_add(f(&x, b), f(&x, c))),
                FDiv(a, b) => X::F(f(&x, a) / f(&x, b)),
                FRint(a) => X::F(f(&x, a).round_ties_even()),
                FAbs(a) => X::F(f(&x, a).abs()),
                FNeg(a) => X::F(-f(&x, a)),
                FMin(a, b) => X::F(f(&x, a).min(f(&x, b))),
                FMax(a, b) => X::F(f(&x, a).max(f(&x, b))),
                FSel(c, a, b) => X::F(if p(&x, c) { f(&x, a) } else { f(&x, b) }),
                FFromBits(a) => X::F(f64::from_bits(i(&x, a) as u64)),
                IConst(c) => X::I(c),
                IAdd(a, b) => X::I(i(&x, a).wrapping_add(i(&x, b))),
                ISub(a, b) => X::I(i(&x, a).wrapping_sub(i(&x, b))),
                IShr(a, s) => X::I(i(&x, a) >> s),
                IShl(a, s) => X::I(i(&x, a) << s),
                IAnd(a, b) => X::I(i(&x, a) & i(&x, b)),
                IOr(a, b) => X::I(i(&x, a) | i(&x, b)),
                IBits(a) => X::I(f(&x, a).to_bits() as i64),
                IFromF(a) => X::I(f(&x, a).round_ties_even() as i64),
                FFromI(a) => X::F(i(&x, a) as f64),
                ISel(c, a, b) => X::I(if p(&x, c) { i(&x, a) } else { i(&x, b) }),
                FCmp(c, a, b) => X::P(cmp(c, f(&x, a), f(&x, b))),
                ICmp(c, a, b) => X::P(cmp(c, i(&x, a), i(&x, b))),
                PAnd(a, b) => X::P(p(&x, a) && p(&x, b)),
                POr(a, b) => X::P(p(&x, a) || p(&x, b)),
                PNot(a) => X::P(!p(&x, a)),
            };
            x.push(v);
        }
        f(&x, self.out)
    }
}

/// Builds a [`Prog`].
struct B {
    ops: Vec<MOp>,
}

/// ln 2 in two parts: a head with 32 significant bits (so `n * LN2_HI` is exact for
/// `|n| < 2^21`) and the rest (fdlibm's constants).
pub const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
pub const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

impl B {
    fn new() -> B {
        B { ops: Vec::new() }
    }
    fn op(&mut self, op: MOp) -> V {
        self.ops.push(op);
        V(self.ops.len() as u32 - 1)
    }
    fn c(&mut self, x: f64) -> V {
        self.op(MOp::FConst(x))
    }
    fn ic(&mut self, x: i64) -> V {
        self.op(MOp::IConst(x))
    }
    fn add(&mut self, a: V, b: V) -> V {
        self.op(MOp::FAdd(a, b))
    }
    fn sub(&mut self, a: V, b: V) -> V {
        self.op(MOp::FSub(a, b))
    }
    fn mul(&mut self, a: V, b: V) -> V {
        self.op(MOp::FMul(a, b))
    }
    fn fma(&mut self, a: V, b: V, c: V) -> V {
        self.op(MOp::FFma(a, b, c))
    }
    fn sel(&mut self, p: V, a: V, b: V) -> V {
        self.op(MOp::FSel(p, a, b))
    }
    fn fcmp(&mut self, c: Cmp, a: V, b: V) -> V {
        self.op(MOp::FCmp(c, a, b))
    }
    fn finish(self, out: V) -> Prog {
        Prog { ops: self.ops, out }
    }

    /// Horner: `((c[0] r + c[1]) r + ...) r + c[last]`, one `fma` per step.
    fn horner(&mut self, r: V, coefs: &[f64]) -> V {
        let mut p = self.c(coefs[0]);
        for &k in &coefs[1..] {
            let kc = self.c(k);
            p = self.fma(p, r, kc);
        }
        p
    }

    /// `(n, r)`: `v = n ln2 + r` with `n` an integer-valued f64 and `|r| <= ln2/2` (for `v`
    /// already clamped to `[-750, 710]`).
    fn reduce(&mut self, v: V) -> (V, V) {
        let l2e = self.c(std::f64::consts::LOG2_E);
        let t = self.mul(v, l2e);
        let n = self.op(MOp::FRint(t));
        let nn = self.op(MOp::FNeg(n));
        let hi = self.c(LN2_HI);
        let lo = self.c(LN2_LO);
        let r = self.fma(nn, hi, v);
        let r = self.fma(nn, lo, r);
        (n, r)
    }

    /// `p * 2^n` for an integer-valued f64 `n` in `[-1100, 1100]`, in two exact halves so a
    /// subnormal result is rounded once and an overflow gives infinity.
    fn scale(&mut self, p: V, n: V) -> V {
        let ni = self.op(MOp::IFromF(n));
        let n1 = self.op(MOp::IShr(ni, 1));
        let n2 = self.op(MOp::ISub(ni, n1));
        let bias = self.ic(1023);
        let e1 = self.op(MOp::IAdd(n1, bias));
        let e1 = self.op(MOp::IShl(e1, 52));
        let s1 = self.op(MOp::FFromBits(e1));
        let e2 = self.op(MOp::IAdd(n2, bias));
        let e2 = self.op(MOp::IShl(e2, 52));
        let s2 = self.op(MOp::FFromBits(e2));
        let q = self.mul(p, s1);
        self.mul(q, s2)
    }

    /// `exp(hi + lo)` for a small `lo` (0 for plain `exp`); NaN for a NaN `hi`.
    fn exp_dd(&mut self, hi: V, lo: Option<V>) -> V {
        let (cmin, cmax) = (self.c(-750.0), self.c(710.0));
        let v = self.op(MOp::FMax(hi, cmin));
        let v = self.op(MOp::FMin(v, cmax));
        let (n, r) = self.reduce(v);
        let r = match lo {
            Some(lo) => self.add(r, lo),
            None => r,
        };
        // 1/13!, ..., 1/2!, 1, 1.
        let mut coefs = Vec::new();
        for k in (2..=13u32).rev() {
            coefs.push(1.0 / (1..=k).map(f64::from).product::<f64>());
        }
        coefs.extend([1.0, 1.0]);
        let p = self.horner(r, &coefs);
        let e = self.scale(p, n);
        let nan = self.fcmp(Cmp::Nan, hi, hi);
        let hh = self.add(hi, hi);
        self.sel(nan, hh, e)
    }

    /// `log(a)` for `a >= 0` as a double-double `(hi, lo)`; `-inf` at 0, `inf` at `inf`, NaN
    /// at NaN (with `lo = 0` in those cases).
    fn log_dd(&mut self, a: V) -> (V, V) {
        use MOp::*;
        let tiny = self.c(f64::MIN_POSITIVE);
        let sub = self.fcmp(Cmp::Lt, a, tiny);
        let two54 = self.c(2f64.powi(54));
        let big = self.mul(a, two54);
        let a1 = self.sel(sub, big, a);
        let bits = self.op(IBits(a1));
        let e = self.op(IShr(bits, 52));
        let (b1023, b1077) = (self.ic(1023), self.ic(1023 + 54));
        let bias = self.op(ISel(sub, b1077, b1023));
        let e = self.op(ISub(e, bias));
        let (mant, one) = (
            self.ic(0x000F_FFFF_FFFF_FFFF),
            self.ic(0x3FF0_0000_0000_0000),
        );
        let mb = self.op(IAnd(bits, mant));
        let mb = self.op(IOr(mb, one));
        let m = self.op(FFromBits(mb));
        let sqrt2 = self.c(std::f64::consts::SQRT_2);
        let up = self.fcmp(Cmp::Gt, m, sqrt2);
        let half = self.c(0.5);
        let mh = self.mul(m, half);
        let m = self.sel(up, mh, m);
        let i1 = self.ic(1);
        let e1 = self.op(IAdd(e, i1));
        let e = self.op(ISel(up, e1, e));
        let ef = self.op(FFromI(e));
        // f = m - 1 exactly; s = f / (2 + f) in double-double.
        let onef = self.c(1.0);
        let f = self.sub(m, onef);
        let twof = self.c(2.0);
        let u_hi = self.add(twof, f);
        let t = self.sub(u_hi, twof);
        let u_lo = self.sub(f, t);
        let s = self.op(FDiv(f, u_hi));
        let ns = self.op(FNeg(s));
        let rr = self.fma(ns, u_hi, f);
        let rr = self.fma(ns, u_lo, rr);
        let s_lo = self.op(FDiv(rr, u_hi));
        // s^2 and s^3 in double-double.
        let z = self.mul(s, s);
        let nz = self.op(FNeg(z));
        let z_lo = self.fma(s, s, nz);
        let s2 = self.add(s, s);
        let z_lo = self.fma(s2, s_lo, z_lo);
        let c = self.mul(z, s);
        let nc = self.op(FNeg(c));
        let c_lo = self.fma(z, s, nc);
        let zs = self.mul(z, s_lo);
        let c_lo2 = self.fma(z_lo, s, zs);
        let c_lo = self.add(c_lo, c_lo2);
        // (2/3) s^3 in double-double: 2/3 = TT_HI + TT_LO.
        let tt_hi = 2.0f64 / 3.0;
        let tt_lo = (-3.0f64).mul_add(tt_hi, 2.0) / 3.0;
        let (th, tl) = (self.c(tt_hi), self.c(tt_lo));
        let d = self.mul(c, th);
        let nd = self.op(FNeg(d));
        let d_lo = self.fma(c, th, nd);
        let ct = self.mul(c, tl);
        let d_lo2 = self.fma(c_lo, th, ct);
        let d_lo = self.add(d_lo, d_lo2);
        // The tail s^5 (2/5 + 2/7 s^2 + ... + 2/25 s^20).
        let coefs: Vec<f64> = (2..=12).rev().map(|k| 2.0 / f64::from(2 * k + 1)).collect();
        let q = self.horner(z, &coefs);
        let zz = self.mul(z, z);
        let sz = self.mul(s, zz);
        let t5 = self.mul(sz, q);
        // log1p f = 2s + d + [2 s_lo + d_lo + t5]: the head by Fast2Sum (|2s| >= |d|).
        let two_s = self.add(s, s);
        let s1 = self.add(two_s, d);
        let t = self.sub(s1, two_s);
        let e1 = self.sub(d, t);
        let lo = self.add(d_lo, t5);
        let s_lo2 = self.add(s_lo, s_lo);
        let lo = self.add(s_lo2, lo);
        let lo1 = self.add(e1, lo);
        // + e ln2, by 2Sum of the heads.
        let (lh, ll) = (self.c(LN2_HI), self.c(LN2_LO));
        let k_hi = self.mul(ef, lh);
        let k_lo = self.mul(ef, ll);
        let h0 = self.add(k_hi, s1);
        let bb = self.sub(h0, k_hi);
        let t1 = self.sub(h0, bb);
        let t1 = self.sub(k_hi, t1);
        let t2 = self.sub(s1, bb);
        let e2 = self.add(t1, t2);
        let l0 = self.add(lo1, k_lo);
        let l0 = self.add(e2, l0);
        let h = self.add(h0, l0);
        let t = self.sub(h, h0);
        let l = self.sub(l0, t);
        // Zero, infinity, NaN.
        let zero = self.c(0.0);
        let inf = self.c(f64::INFINITY);
        let ninf = self.c(f64::NEG_INFINITY);
        let is0 = self.fcmp(Cmp::Eq, a, zero);
        let isinf = self.fcmp(Cmp::Eq, a, inf);
        let isnan = self.fcmp(Cmp::Nan, a, a);
        let aa = self.add(a, a);
        let h = self.sel(is0, ninf, h);
        let h = self.sel(isinf, inf, h);
        let h = self.sel(isnan, aa, h);
        let special = self.op(POr(is0, isinf));
        let special = self.op(POr(special, isnan));
        let l = self.sel(special, zero, l);
        (h, l)
    }

    /// `expm1(v)` for `v` in `[0, 44]`: below 1.1 a degree-21 Taylor polynomial of `v`
    /// itself (all terms positive: no cancellation), above it the reduction of `exp`.
    fn expm1_small(&mut self, v: V) -> V {
        let (n, r) = self.reduce(v);
        let lim = self.c(1.1);
        let small = self.fcmp(Cmp::Lt, v, lim);
        let zero = self.c(0.0);
        let n = self.sel(small, zero, n);
        let r = self.sel(small, v, r);
        // expm1 r = r + r^2 (1/2 + r/6 + ... + r^19/21!), the last step one fma.
        let mut coefs = Vec::new();
        for k in (2..=21u32).rev() {
            coefs.push(1.0 / (1..=k).map(f64::from).product::<f64>());
        }
        let p = self.horner(r, &coefs);
        let rr = self.mul(r, r);
        let em = self.fma(rr, p, r);
        // 2^n em + (2^n - 1).
        let one = self.c(1.0);
        let s = self.scale(one, n);
        let sm1 = self.sub(s, one);
        self.fma(s, em, sm1)
    }
}

/// `exp(x)`.
pub fn exp() -> Prog {
    let mut b = B::new();
    let x = b.op(MOp::Input(0));
    let r = b.exp_dd(x, None);
    b.finish(r)
}

/// `log(x)`: NaN below 0.
pub fn log() -> Prog {
    let mut b = B::new();
    let x = b.op(MOp::Input(0));
    let (h, _) = b.log_dd(x);
    let zero = b.c(0.0);
    let neg = b.fcmp(Cmp::Lt, x, zero);
    let nan = b.c(f64::NAN);
    let r = b.sel(neg, nan, h);
    b.finish(r)
}

/// `tanh(x)`.
pub fn tanh() -> Prog {
    let mut b = B::new();
    let x = b.op(MOp::Input(0));
    let a = b.op(MOp::FAbs(x));
    let lim = b.c(22.0);
    let ac = b.op(MOp::FMin(a, lim));
    let a2 = b.add(ac, ac);
    let e = b.expm1_small(a2);
    // e / (e + 2) with the denominator in double-double (Fast2Sum: 2 > e below ln 3 and the
    // tail otherwise negligible) and one correction step of the quotient.
    let two = b.c(2.0);
    let den = b.add(e, two);
    let dt = b.sub(den, two);
    let d_lo = b.sub(e, dt);
    let q = b.op(MOp::FDiv(e, den));
    let nq = b.op(MOp::FNeg(q));
    let rem = b.fma(nq, den, e);
    let rem = b.fma(nq, d_lo, rem);
    let corr = b.op(MOp::FDiv(rem, den));
    let t = b.add(q, corr);
    let one = b.c(1.0);
    let big = b.fcmp(Cmp::Gt, a, lim);
    let t = b.sel(big, one, t);
    let zero = b.c(0.0);
    let neg = b.fcmp(Cmp::Lt, x, zero);
    let nt = b.op(MOp::FNeg(t));
    let t = b.sel(neg, nt, t);
    // tanh(-0) = -0; NaN stays NaN.
    let z = b.fcmp(Cmp::Eq, x, zero);
    let t = b.sel(z, x, t);
    let nan = b.fcmp(Cmp::Nan, x, x);
    let xx = b.add(x, x);
    let t = b.sel(nan, xx, t);
    b.finish(t)
}

/// `sigmoid(x) = 1 / (1 + exp(-x))`.
pub fn sigmoid() -> Prog {
    let mut b = B::new();
    let x = b.op(MOp::Input(0));
    let nx = b.op(MOp::FNeg(x));
    let e = b.exp_dd(nx, None);
    let one = b.c(1.0);
    let d = b.add(one, e);
    let r = b.op(MOp::FDiv(one, d));
    b.finish(r)
}

/// `pow(x, y)` with the special cases of C's `pow`.
pub fn pow() -> Prog {
    use MOp::*;
    let mut b = B::new();
    let x = b.op(Input(0));
    let y = b.op(Input(1));
    let a = b.op(FAbs(x));
    let (h, l) = b.log_dd(a);
    // y (h + l) = p_hi + p_lo exactly up to the rounding of y l.
    let p_hi = b.mul(y, h);
    let np = b.op(FNeg(p_hi));
    let err = b.fma(y, h, np);
    let yl = b.mul(y, l);
    let p_lo = b.add(err, yl);
    // Beyond the clamp of `exp` (and for infinities and NaN) the low part is dropped.
    let ap = b.op(FAbs(p_hi));
    let lim = b.c(745.0);
    let inside = b.fcmp(Cmp::Lt, ap, lim);
    let zero = b.c(0.0);
    let p_lo = b.sel(inside, p_lo, zero);
    let inf = b.c(f64::INFINITY);
    let r = b.exp_dd(p_hi, Some(p_lo));
    // Integer and odd y (infinities count as even integers).
    let yi = b.op(FRint(y));
    let int = b.fcmp(Cmp::Eq, yi, y);
    let half = b.c(0.5);
    let yh = b.mul(y, half);
    let yhi = b.op(FRint(yh));
    let odd = b.fcmp(Cmp::Ne, yhi, yh);
    let odd = b.op(PAnd(odd, int));
    // A negative sign bit (-0 included) with odd y: negate.
    let xb = b.op(IBits(x));
    let i0 = b.ic(0);
    let sign = b.op(ICmp(Cmp::Lt, xb, i0));
    let flip = b.op(PAnd(sign, odd));
    let nr = b.op(FNeg(r));
    let r = b.sel(flip, nr, r);
    // Finite negative x with non-integer y: NaN.
    let ninf = b.c(f64::NEG_INFINITY);
    let negf = b.fcmp(Cmp::Lt, x, zero);
    let gt = b.fcmp(Cmp::Gt, x, ninf);
    let negf = b.op(PAnd(negf, gt));
    let nonint = b.op(PNot(int));
    let bad = b.op(PAnd(negf, nonint));
    let nan = b.c(f64::NAN);
    let r = b.sel(bad, nan, r);
    // |x| = 1 with infinite y: 1 (the log is 0 and 0 * inf would be NaN).
    let one = b.c(1.0);
    let a1 = b.fcmp(Cmp::Eq, a, one);
    let ay = b.op(FAbs(y));
    let yinf = b.fcmp(Cmp::Eq, ay, inf);
    let a1y = b.op(PAnd(a1, yinf));
    let r = b.sel(a1y, one, r);
    // x = 1 or y = 0: 1, even with a NaN on the other side.
    let x1 = b.fcmp(Cmp::Eq, x, one);
    let y0 = b.fcmp(Cmp::Eq, y, zero);
    let unit = b.op(POr(x1, y0));
    let r = b.sel(unit, one, r);
    b.finish(r)
}
