//! `exp`, `log`, `tanh` and `sigmoid` for f32, emitted as Cranelift IR.
//!
//! Cranelift has no transcendental instructions. These are the Cephes single-precision
//! polynomials (as in `sse_mathfun`), written once over a [`Lanes`] type so the same code
//! serves scalars (`f32`) and vectors (`f32x4`), with the special cases made branch-free by
//! selects. Accuracy is about 1-2 ulp over the whole range, including subnormal inputs and
//! results, infinities and NaN (checked against the `f64` functions in `tests/math.rs`).
//! `f64` transcendentals call the Rust functions instead ([`super::runtime`]).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Emits f32 math over scalars or `f32x4` vectors.
pub struct Lanes<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    /// `F32` or `F32X4`.
    pub fty: Type,
    /// Use fused multiply-adds (one rounding instead of two: as accurate or better, and
    /// about half the instructions of a polynomial).
    pub fma: bool,
}

impl Lanes<'_, '_> {
    fn vector(&self) -> bool {
        self.fty.is_vector()
    }

    /// The integer type of the same shape (`I32` / `I32X4`).
    fn ity(&self) -> Type {
        if self.vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    fn f(&mut self, v: f32) -> Value {
        let c = self.b.ins().f32const(v);
        if self.vector() {
            self.b.ins().splat(self.fty, c)
        } else {
            c
        }
    }

    fn i(&mut self, v: i32) -> Value {
        let c = self.b.ins().iconst(types::I32, i64::from(v));
        if self.vector() {
            self.b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    fn flags(&self) -> MemFlagsData {
        MemFlagsData::new().with_endianness(Endianness::Little)
    }

    fn bits_of(&mut self, x: Value) -> Value {
        let (ity, fl) = (self.ity(), self.flags());
        self.b.ins().bitcast(ity, fl, x)
    }

    fn float_of(&mut self, x: Value) -> Value {
        let (fty, fl) = (self.fty, self.flags());
        self.b.ins().bitcast(fty, fl, x)
    }

    fn add(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fadd(x, y)
    }

    fn sub(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fsub(x, y)
    }

    fn mul(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fmul(x, y)
    }

    /// `x * y + z`, fused where the target has FMA.
    fn mul_add(&mut self, x: Value, y: Value, z: Value) -> Value {
        if self.fma {
            self.b.ins().fma(x, y, z)
        } else {
            let t = self.mul(x, y);
            self.add(t, z)
        }
    }

    /// `x * c + y` for a constant `c`.
    fn mul_add_c(&mut self, x: Value, c: f32, y: Value) -> Value {
        let c = self.f(c);
        self.mul_add(x, c, y)
    }

    /// Horner evaluation of `coefs[0] x^n + ... + coefs[n]`.
    fn poly(&mut self, x: Value, coefs: &[f32]) -> Value {
        let mut acc = self.f(coefs[0]);
        for &c in &coefs[1..] {
            let c = self.f(c);
            acc = self.mul_add(acc, x, c);
        }
        acc
    }

    /// A comparison as a select condition (`i8` for scalars, a lane mask for vectors).
    fn cmp(&mut self, cc: FloatCC, x: Value, y: Value) -> Value {
        self.b.ins().fcmp(cc, x, y)
    }

    /// `cond ? a : b` for a condition from [`Lanes::cmp`].
    fn sel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.vector() {
            let (fty, fl) = (self.fty, self.flags());
            let m = self.b.ins().bitcast(fty, fl, cond);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    /// `2^n` for integer lanes `n` in `-126..=127`.
    fn pow2(&mut self, n: Value) -> Value {
        let bias = self.i(127);
        let e = self.b.ins().iadd(n, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        self.float_of(e)
    }

    /// `exp(x)`.
    pub fn exp(&mut self, x: Value) -> Value {
        // Beyond these the result is +inf or rounds to +0 (exp(-103.97) < 2^-150).
        const HI: f32 = 88.722_83;
        const LO: f32 = -103.972_08;
        let (hi, lo) = (self.f(HI), self.f(LO));
        // Clamp by selects (cheaper than fmin/fmax's NaN handling); NaN stays NaN.
        let below = self.cmp(FloatCC::LessThan, x, lo);
        let xc = self.sel(below, lo, x);
        let above = self.cmp(FloatCC::GreaterThan, xc, hi);
        let xc = self.sel(above, hi, xc);
        // n = round(x / ln 2) by the 1.5 * 2^23 trick; its bits hold n as an integer.
        let magic = self.f(12_582_912.0);
        let t = self.mul_add_c(xc, std::f32::consts::LOG2_E, magic);
        let nf = self.sub(t, magic);
        let tb = self.bits_of(t);
        let mb = self.bits_of(magic);
        let n = self.b.ins().isub(tb, mb);
        // r = x - n ln2 in two parts (Cody-Waite), |r| <= ln2 / 2.
        let r = self.mul_add_c(nf, -0.693_359_4, xc);
        let r = self.mul_add_c(nf, 2.121_944_4e-4, r);
        let p = self.poly(
            r,
            &[
                1.987_569_1e-4,
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                0.5,
            ],
        );
        let rr = self.mul(r, r);
        let p = self.mul_add(p, rr, r);
        let one = self.f(1.0);
        let p = self.add(p, one);
        // p * 2^n with n in -150..=128, as two factors that are normal numbers.
        let n1 = self.b.ins().sshr_imm_s(n, 1);
        let n2 = self.b.ins().isub(n, n1);
        let s1 = self.pow2(n1);
        let s2 = self.pow2(n2);
        let y = self.mul(p, s1);
        let y = self.mul(y, s2);
        let hi = self.f(HI);
        let lo = self.f(LO);
        let big = self.cmp(FloatCC::GreaterThan, x, hi);
        let small = self.cmp(FloatCC::LessThan, x, lo);
        let inf = self.f(f32::INFINITY);
        let zero = self.f(0.0);
        let y = self.sel(big, inf, y);
        self.sel(small, zero, y)
    }

    /// `ln(x)`.
    pub fn log(&mut self, x: Value) -> Value {
        // Scale subnormals into the normal range.
        let min_normal = self.f(f32::MIN_POSITIVE);
        let sub = self.cmp(FloatCC::LessThan, x, min_normal);
        let scale = self.f(8_388_608.0); // 2^23
        let xs = self.mul(x, scale);
        let xs = self.sel(sub, xs, x);
        let m23 = self.f(-23.0);
        let zero = self.f(0.0);
        let eadj = self.sel(sub, m23, zero);
        // x = m * 2^e with m in [0.5, 1).
        let bits = self.bits_of(xs);
        let e = self.b.ins().ushr_imm_s(bits, 23);
        let ff = self.i(0xff);
        let e = self.b.ins().band(e, ff);
        let bias = self.i(126);
        let e = self.b.ins().isub(e, bias);
        let ef = self.b.ins().fcvt_from_sint(self.fty, e);
        let ef = self.add(ef, eadj);
        let mant = self.i(0x007f_ffff);
        let mb = self.b.ins().band(bits, mant);
        let half = self.i(0x3f00_0000);
        let mb = self.b.ins().bor(mb, half);
        let m = self.float_of(mb);
        // m in [sqrt(1/2), sqrt(2)): m < sqrt(1/2) ? (2m - 1, e - 1) : (m - 1, e)
        let sqrthf = self.f(std::f32::consts::FRAC_1_SQRT_2);
        let lt = self.cmp(FloatCC::LessThan, m, sqrthf);
        let one = self.f(1.0);
        let zero = self.f(0.0);
        let dec = self.sel(lt, one, zero);
        let ef = self.sub(ef, dec);
        let madd = self.sel(lt, m, zero);
        let m = self.add(m, madd);
        let m = self.sub(m, one);
        let z = self.mul(m, m);
        let p = self.poly(
            m,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_9e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_8e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
        );
        let y = self.mul(p, m);
        let y = self.mul(y, z);
        let y = self.mul_add_c(ef, -2.121_944_4e-4, y);
        let y = self.mul_add_c(z, -0.5, y);
        let r = self.add(m, y);
        let r = self.mul_add_c(ef, 0.693_359_4, r);
        // Special cases: log(0) = -inf, log(inf) = inf, log(x < 0) = log(NaN) = NaN.
        let zero = self.f(0.0);
        let inf = self.f(f32::INFINITY);
        let ninf = self.f(f32::NEG_INFINITY);
        let nan = self.f(f32::NAN);
        let is_zero = self.cmp(FloatCC::Equal, x, zero);
        let is_inf = self.cmp(FloatCC::Equal, x, inf);
        let bad = self.cmp(FloatCC::UnorderedOrLessThan, x, zero);
        let r = self.sel(is_inf, inf, r);
        let r = self.sel(is_zero, ninf, r);
        self.sel(bad, nan, r)
    }

    /// `tanh(x)`.
    pub fn tanh(&mut self, x: Value) -> Value {
        // |x| > 0.625: 1 - 2 / (exp(2|x|) + 1) with the sign of x; else an odd polynomial.
        let a = self.b.ins().fabs(x);
        let two = self.f(2.0);
        let a2 = self.mul(a, two);
        let e = self.exp(a2);
        let one = self.f(1.0);
        let d = self.add(e, one);
        let q = self.b.ins().fdiv(two, d);
        let big = self.sub(one, q);
        // copysign(big, x) by bits (big >= 0)
        let sign_mask = self.i(i32::MIN);
        let xb = self.bits_of(x);
        let s = self.b.ins().band(xb, sign_mask);
        let bb = self.bits_of(big);
        let bb = self.b.ins().bor(bb, s);
        let big = self.float_of(bb);
        let z = self.mul(x, x);
        let p = self.poly(
            z,
            &[
                -5.704_988_7e-3,
                2.063_909e-2,
                -5.373_971_6e-2,
                1.333_144_2e-1,
                -3.333_328e-1,
            ],
        );
        let p = self.mul(p, z);
        let p = self.mul(p, x);
        let small = self.add(p, x);
        let cut = self.f(0.625);
        let is_big = self.cmp(FloatCC::GreaterThan, a, cut);
        self.sel(is_big, big, small)
    }

    /// `1 / (1 + exp(-x))`.
    pub fn sigmoid(&mut self, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(nx);
        let one = self.f(1.0);
        let d = self.add(one, e);
        self.b.ins().fdiv(one, d)
    }
}
