//! Rust functions the JIT-compiled kernels call: `f64` transcendentals and `pow`.
//!
//! Cranelift has no instructions for these. `f32` `exp`/`log`/`tanh`/`sigmoid` are emitted
//! inline as polynomials ([`super::math`]); the `f64` ones and `pow` (whose special cases are
//! C's, as in PyTorch) call these, one lane at a time. `f32` versions exist too, selected by
//! `KILN_JIT_MATH=extern` to measure the polynomials against libm.

/// A helper's symbol, its address, and its arity and type (`true`: f64, `false`: f32).
pub struct Helper {
    pub name: &'static str,
    pub addr: *const u8,
    pub args: usize,
    pub f64: bool,
}

extern "C" fn exp_f64(x: f64) -> f64 {
    x.exp()
}
extern "C" fn log_f64(x: f64) -> f64 {
    x.ln()
}
extern "C" fn tanh_f64(x: f64) -> f64 {
    x.tanh()
}
extern "C" fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
extern "C" fn pow_f64(x: f64, y: f64) -> f64 {
    x.powf(y)
}
extern "C" fn exp_f32(x: f32) -> f32 {
    x.exp()
}
extern "C" fn log_f32(x: f32) -> f32 {
    x.ln()
}
extern "C" fn tanh_f32(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn sigmoid_f32(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}
/// Computed in `f64` and rounded once, as the reference interpreter does.
extern "C" fn pow_f32(x: f32, y: f32) -> f32 {
    f64::from(x).powf(f64::from(y)) as f32
}

/// All helpers, for registering with the JIT.
pub fn helpers() -> Vec<Helper> {
    let h = |name, addr: *const u8, args, f64| Helper {
        name,
        addr,
        args,
        f64,
    };
    vec![
        h("kiln_exp_f64", exp_f64 as *const u8, 1, true),
        h("kiln_log_f64", log_f64 as *const u8, 1, true),
        h("kiln_tanh_f64", tanh_f64 as *const u8, 1, true),
        h("kiln_sigmoid_f64", sigmoid_f64 as *const u8, 1, true),
        h("kiln_pow_f64", pow_f64 as *const u8, 2, true),
        h("kiln_exp_f32", exp_f32 as *const u8, 1, false),
        h("kiln_log_f32", log_f32 as *const u8, 1, false),
        h("kiln_tanh_f32", tanh_f32 as *const u8, 1, false),
        h("kiln_sigmoid_f32", sigmoid_f32 as *const u8, 1, false),
        h("kiln_pow_f32", pow_f32 as *const u8, 2, false),
    ]
}
