//! Kernel IR to Cranelift IR.
//!
//! Each loop-nest kernel becomes `fn(bufs: *const *mut u8, lo: i64, hi: i64)`: `bufs[j]` is
//! the base address of parameter `j`; `lo..hi` is the range of the kernel's parallel outer loop
//! (the runtime splits it across threads), ignored by kernels without one.
//!
//! Values are scalars (`bool` as an `i8` holding 0 or 1) except in vectorised loops
//! ([`Loop::vector`]): there each value is a 128-bit vector of the loop's lanes (`f32x4`,
//! `f64x2`; a bool is a lane mask, all ones or zero, of the lanes' width). Such a loop runs
//! `lanes` iterations at a time while they all lie below the extent, then a scalar tail.
//! Accumulators updated in a vector loop get a vector accumulator, folded lane by lane into
//! the scalar one after the vector part.
//!
//! Loads: contiguous in the vector variable (coefficient 1) become one vector load, invariant
//! ones a scalar load and splat, others (and guarded ones) a gather of scalar loads. A guarded
//! load clamps its index into the buffer before loading and selects 0 where the guard is false.

use crate::cpu::math::Lanes;
use crate::kernel::*;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Block, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use std::collections::HashMap;

type R<T> = Result<T, String>;

/// Scalar Cranelift type of a dtype.
fn sty(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I64 => types::I64,
        DType::Bool => types::I8,
    }
}

/// Emits one kernel's function body.
pub struct Emitter<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    k: &'a Kernel,
    funcs: &'a HashMap<&'static str, FuncRef>,
    extern_math: bool,
    /// Whether the target has FMA (used by the math polynomials).
    fma: bool,
    bases: Vec<Value>,
    vars: Vec<Option<Value>>,
    scal: Vec<Option<Value>>,
    vect: Vec<Option<Value>>,
    accs: Vec<Variable>,
    vaccs: Vec<Option<Variable>>,
    /// Lanes of the loop being emitted (1: scalar) and its variable.
    lanes: u32,
    vvar: Option<Var>,
}

/// Emits `k` into the builder's function (which has the kernel signature), finalising it.
pub fn emit_kernel(
    mut b: FunctionBuilder<'_>,
    k: &Kernel,
    funcs: &HashMap<&'static str, FuncRef>,
    extern_math: bool,
    fma: bool,
    config: cranelift_codegen::isa::TargetFrontendConfig,
) -> R<()> {
    let Body::Loops(stmts) = &k.body else {
        return Err(format!("kernel {} is a call, not a loop nest", k.name));
    };
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (bufs, lo, hi) = (params[0], params[1], params[2]);
    let mut bases = Vec::new();
    for j in 0..k.params.len() {
        let flags = MemFlagsData::trusted().with_readonly();
        bases.push(b.ins().load(types::I64, flags, bufs, (j * 8) as i32));
    }
    let accs = k.accs.iter().map(|a| b.declare_var(sty(a.dtype))).collect();
    let mut e = Emitter {
        b: &mut b,
        k,
        funcs,
        extern_math,
        fma,
        bases,
        vars: vec![None; k.vars.len()],
        scal: vec![None; k.vals.len()],
        vect: vec![None; k.vals.len()],
        accs,
        vaccs: vec![None; k.accs.len()],
        lanes: 1,
        vvar: None,
    };
    e.stmts(stmts, Some((lo, hi)))?;
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(config);
    Ok(())
}

impl Emitter<'_, '_> {
    // ----- helpers ------------------------------------------------------------------------

    /// Lane mask type for the current lanes (`i32x4` or `i64x2`) and its lane type.
    fn mask_ty(&self) -> (Type, Type) {
        if self.lanes == 4 {
            (types::I32X4, types::I32)
        } else {
            (types::I64X2, types::I64)
        }
    }

    /// Vector type of a dtype in the current lanes.
    fn vty(&self, d: DType) -> R<Type> {
        Ok(match (d, self.lanes) {
            (DType::F32, 4) => types::F32X4,
            (DType::F64, 2) => types::F64X2,
            (DType::Bool, _) => self.mask_ty().0,
            _ => return Err(format!("{d} in a {}-lane loop", self.lanes)),
        })
    }

    /// Flags of a vector store (unaligned, cannot trap: the verifier proved the index).
    fn vflags() -> MemFlagsData {
        MemFlagsData::new().with_notrap()
    }

    /// Flags of a lane-reinterpreting bitcast (only the byte order may be given).
    fn bitcast_flags() -> MemFlagsData {
        MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
    }

    fn load_flags(&self, buf: Buf, vector: bool) -> MemFlagsData {
        let base = if vector {
            MemFlagsData::new().with_notrap()
        } else {
            MemFlagsData::trusted()
        };
        if self.k.params[buf.0 as usize].access == Access::Read {
            base.with_readonly()
        } else {
            base
        }
    }

    fn scalar_const(&mut self, s: Scalar) -> Value {
        match s {
            Scalar::F32(v) => self.b.ins().f32const(v),
            Scalar::F64(v) => self.b.ins().f64const(v),
            Scalar::I64(v) => self.b.ins().iconst(types::I64, v),
            Scalar::Bool(v) => self.b.ins().iconst(types::I8, v as i64),
        }
    }

    /// A scalar (bool: `i8` 0/1) broadcast to all lanes (bool: a mask).
    fn splat(&mut self, d: DType, x: Value) -> R<Value> {
        let ty = self.vty(d)?;
        if d == DType::Bool {
            let lane = self.mask_ty().1;
            let m = self.b.ins().bmask(lane, x);
            Ok(self.b.ins().splat(ty, m))
        } else {
            Ok(self.b.ins().splat(ty, x))
        }
    }

    fn val(&mut self, v: Val) -> R<Value> {
        self.scal[v.0 as usize].ok_or_else(|| format!("{v} has no scalar value"))
    }

    /// The vector of `v`, splatting a scalar defined outside the vector loop.
    fn vval(&mut self, v: Val) -> R<Value> {
        if let Some(x) = self.vect[v.0 as usize] {
            return Ok(x);
        }
        let s = self.val(v)?;
        let d = self.k.vals[v.0 as usize];
        self.splat(d, s)
    }

    /// Evaluates an index expression; `sub` overrides one variable's value.
    fn ix(&mut self, e: &Ix, sub: Option<(Var, Value)>) -> R<Value> {
        let mut acc: Option<Value> = None;
        for (a, k) in &e.terms {
            let av = match a {
                Atom::Var(w) => match (sub, &self.k.defs[w.0 as usize]) {
                    (Some((sv, x)), _) if sv == *w => x,
                    (_, Some(def)) => self.ix(def, sub)?,
                    _ => self.vars[w.0 as usize].ok_or_else(|| format!("{w} not in scope"))?,
                },
                Atom::Div(inner, d) => {
                    let x = self.ix(inner, sub)?;
                    let dv = self.b.ins().iconst(types::I64, *d);
                    self.b.ins().udiv(x, dv)
                }
                Atom::Mod(inner, d) => {
                    let x = self.ix(inner, sub)?;
                    let dv = self.b.ins().iconst(types::I64, *d);
                    self.b.ins().urem(x, dv)
                }
            };
            let t = if *k == 1 {
                av
            } else {
                self.b.ins().imul_imm_s(av, *k)
            };
            acc = Some(match acc {
                Some(s) => self.b.ins().iadd(s, t),
                None => t,
            });
        }
        Ok(match acc {
            Some(s) if e.c == 0 => s,
            Some(s) => self.b.ins().iadd_imm_s(s, e.c),
            None => self.b.ins().iconst(types::I64, e.c),
        })
    }

    /// Address of element `idx` of `buf`.
    fn addr(&mut self, buf: Buf, idx: Value) -> Value {
        let size = self.k.params[buf.0 as usize].dtype.size_of() as i64;
        let off = if size == 1 {
            idx
        } else {
            self.b.ins().ishl_imm_s(idx, size.trailing_zeros() as i64)
        };
        self.b.ins().iadd(self.bases[buf.0 as usize], off)
    }

    /// `idx` clamped into `0..len` (len >= 1, checked by the verifier).
    fn clamp(&mut self, buf: Buf, idx: Value) -> Value {
        let len = self.k.params[buf.0 as usize].len as i64;
        let zero = self.b.ins().iconst(types::I64, 0);
        let top = self.b.ins().iconst(types::I64, (len - 1).max(0));
        let x = self.b.ins().smax(idx, zero);
        self.b.ins().smin(x, top)
    }

    /// A scalar load of `buf[idx]`.
    fn load_scalar(&mut self, buf: Buf, idx: Value) -> Value {
        let d = self.k.params[buf.0 as usize].dtype;
        let a = self.addr(buf, idx);
        let fl = self.load_flags(buf, false);
        self.b.ins().load(sty(d), fl, a, 0)
    }

    fn call(&mut self, name: &str, args: &[Value]) -> R<Value> {
        let f = *self
            .funcs
            .get(name)
            .ok_or_else(|| format!("no runtime helper {name}"))?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst)[0])
    }

    // ----- statements ---------------------------------------------------------------------

    fn stmts(&mut self, stmts: &[Stmt], top: Option<(Value, Value)>) -> R<()> {
        for s in stmts {
            match s {
                Stmt::Loop(l) => {
                    let range = if l.parallel { top } else { None };
                    self.emit_loop(l, range)?;
                }
                Stmt::Let(v, op) => {
                    let d = self.k.vals[v.0 as usize];
                    if self.lanes > 1 {
                        let x = self.vop(d, op)?;
                        self.vect[v.0 as usize] = Some(x);
                    } else {
                        let x = self.sop(d, op)?;
                        self.scal[v.0 as usize] = Some(x);
                    }
                }
                Stmt::Store { buf, index, value } => self.store(*buf, index, *value)?,
                Stmt::AccInit(a) => {
                    let d = self.k.accs[a.0 as usize];
                    let id = self.scalar_const(Scalar::identity(d.op, d.dtype));
                    self.b.def_var(self.accs[a.0 as usize], id);
                }
                Stmt::AccUpdate(a, v) => {
                    let d = self.k.accs[a.0 as usize];
                    if self.lanes > 1 {
                        let var = self.vaccs[a.0 as usize]
                            .ok_or_else(|| format!("{a} has no vector accumulator"))?;
                        let cur = self.b.use_var(var);
                        let x = self.vval(*v)?;
                        let n = self.combine(d, cur, x);
                        self.b.def_var(var, n);
                    } else {
                        let var = self.accs[a.0 as usize];
                        let cur = self.b.use_var(var);
                        let x = self.val(*v)?;
                        let n = self.combine(d, cur, x);
                        self.b.def_var(var, n);
                    }
                }
            }
        }
        Ok(())
    }

    fn combine(&mut self, d: AccDecl, x: Value, y: Value) -> Value {
        match (d.op, d.dtype.is_float()) {
            (ReduceOp::Sum, true) => self.b.ins().fadd(x, y),
            (ReduceOp::Sum, false) => self.b.ins().iadd(x, y),
            (ReduceOp::Max, true) => self.b.ins().fmax(x, y),
            (ReduceOp::Max, false) => self.b.ins().smax(x, y),
        }
    }

    /// Opens a counted loop `while i (+ step - 1) < end`; returns `i` and the blocks to close.
    fn open(&mut self, iv: Variable, end: Value, step: u32) -> (Value, Block, Block) {
        let header = self.b.create_block();
        let body = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(iv);
        let cond = if step == 1 {
            self.b.ins().icmp(IntCC::SignedLessThan, i, end)
        } else {
            let last = self.b.ins().iadd_imm_s(i, i64::from(step));
            self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, end)
        };
        self.b.ins().brif(cond, body, &[], exit, &[]);
        self.b.switch_to_block(body);
        (i, header, exit)
    }

    fn close(&mut self, iv: Variable, i: Value, step: u32, header: Block, exit: Block) {
        let next = self.b.ins().iadd_imm_s(i, i64::from(step));
        self.b.def_var(iv, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
    }

    fn emit_loop(&mut self, l: &Loop, range: Option<(Value, Value)>) -> R<()> {
        let (start, end) = match range {
            Some(r) => r,
            None => {
                let s = self.b.ins().iconst(types::I64, 0);
                let e = self.b.ins().iconst(types::I64, l.extent as i64);
                (s, e)
            }
        };
        let iv = self.b.declare_var(types::I64);
        self.b.def_var(iv, start);
        if l.vector > 1 && self.lanes == 1 {
            let lanes = l.vector;
            self.lanes = lanes;
            self.vvar = Some(l.var);
            // Vector accumulators for the accumulators this loop updates.
            let mut updated = Vec::new();
            for s in &l.body {
                if let Stmt::AccUpdate(a, _) = s {
                    if !updated.contains(a) {
                        updated.push(*a);
                    }
                }
            }
            for &a in &updated {
                let d = self.k.accs[a.0 as usize];
                let ty = self.vty(d.dtype)?;
                let var = self.b.declare_var(ty);
                let id = self.scalar_const(Scalar::identity(d.op, d.dtype));
                let v = self.b.ins().splat(ty, id);
                self.b.def_var(var, v);
                self.vaccs[a.0 as usize] = Some(var);
            }
            let (i, header, exit) = self.open(iv, end, lanes);
            self.vars[l.var.0 as usize] = Some(i);
            self.vect.iter_mut().for_each(|v| *v = None);
            self.stmts(&l.body, None)?;
            self.close(iv, i, lanes, header, exit);
            self.lanes = 1;
            self.vvar = None;
            self.vect.iter_mut().for_each(|v| *v = None);
            // Fold the vector accumulators, lane by lane, into the scalar ones.
            for &a in &updated {
                let d = self.k.accs[a.0 as usize];
                let var = self.vaccs[a.0 as usize].take().expect("declared above");
                let vec = self.b.use_var(var);
                let svar = self.accs[a.0 as usize];
                let mut cur = self.b.use_var(svar);
                for lane in 0..lanes {
                    let x = self.b.ins().extractlane(vec, lane as u8);
                    cur = self.combine(d, cur, x);
                }
                self.b.def_var(svar, cur);
            }
        }
        // The scalar loop (or the tail after the vector part).
        let (i, header, exit) = self.open(iv, end, 1);
        self.vars[l.var.0 as usize] = Some(i);
        self.stmts(&l.body, None)?;
        self.close(iv, i, 1, header, exit);
        self.vars[l.var.0 as usize] = None;
        Ok(())
    }

    fn store(&mut self, buf: Buf, index: &Ix, value: Val) -> R<()> {
        let d = self.k.params[buf.0 as usize].dtype;
        let idx = self.ix(index, None)?;
        let a = self.addr(buf, idx);
        if self.lanes == 1 {
            let x = self.val(value)?;
            self.b.ins().store(MemFlagsData::trusted(), x, a, 0);
            return Ok(());
        }
        let x = self.vval(value)?;
        // Lanes `coef` elements apart (a loop split into residue classes stores every
        // `coef`-th element); the vectoriser admits only 1..=64, so offsets fit an i32.
        let coef = match self.vvar {
            Some(v) => index.linear_coef(v).unwrap_or(1),
            None => 1,
        };
        let step = i32::try_from(coef * d.size_of() as i64)
            .map_err(|_| format!("store stride {coef} out of range"))?;
        if d == DType::Bool {
            for lane in 0..self.lanes {
                let m = self.b.ins().extractlane(x, lane as u8);
                let bit = self.b.ins().band_imm_s(m, 1);
                self.b
                    .ins()
                    .istore8(MemFlagsData::trusted(), bit, a, lane as i32 * step);
            }
        } else if coef != 1 {
            for lane in 0..self.lanes {
                let e = self.b.ins().extractlane(x, lane as u8);
                self.b
                    .ins()
                    .store(MemFlagsData::trusted(), e, a, lane as i32 * step);
            }
        } else {
            self.b.ins().store(Self::vflags(), x, a, 0);
        }
        Ok(())
    }

    // ----- scalar ops ---------------------------------------------------------------------

    fn sop(&mut self, d: DType, op: &KOp) -> R<Value> {
        Ok(match op {
            KOp::Const(s) => self.scalar_const(*s),
            KOp::Load { buf, index, guard } => {
                let idx = self.ix(index, None)?;
                match guard {
                    None => self.load_scalar(*buf, idx),
                    Some(g) => {
                        let g = self.val(*g)?;
                        let idx = self.clamp(*buf, idx);
                        let x = self.load_scalar(*buf, idx);
                        let z = self.scalar_const(Scalar::from_f64(d, 0.0));
                        self.b.ins().select(g, x, z)
                    }
                }
            }
            KOp::Unary(u, a) => {
                let x = self.val(*a)?;
                self.unary(*u, d, x)?
            }
            KOp::Binary(bop, x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.binary(*bop, d, x, y)?
            }
            KOp::Compare(c, x, y) => {
                let od = self.k.vals[x.0 as usize];
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                match od {
                    DType::F32 | DType::F64 => self.b.ins().fcmp(float_cc(*c), x, y),
                    DType::I64 => self.b.ins().icmp(int_cc(*c, true), x, y),
                    DType::Bool => self.b.ins().icmp(int_cc(*c, false), x, y),
                }
            }
            KOp::Select(c, x, y) => {
                let (c, x, y) = (self.val(*c)?, self.val(*x)?, self.val(*y)?);
                self.b.ins().select(c, x, y)
            }
            KOp::Cast(to, x) => {
                let from = self.k.vals[x.0 as usize];
                let x = self.val(*x)?;
                self.cast(from, *to, x)
            }
            KOp::InRange { index, lo, hi } => {
                let i = self.ix(index, None)?;
                self.in_range(i, *lo, *hi)
            }
            KOp::And(x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.b.ins().band(x, y)
            }
            KOp::ReadAcc(a) => self.b.use_var(self.accs[a.0 as usize]),
        })
    }

    fn in_range(&mut self, i: Value, lo: i64, hi: i64) -> Value {
        let a = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, i, lo);
        let b = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, hi);
        self.b.ins().band(a, b)
    }

    /// A unary op on a scalar or a vector (`x`'s type tells).
    fn unary(&mut self, u: UnaryOp, d: DType, x: Value) -> R<Value> {
        let ty = self.b.func.dfg.value_type(x);
        Ok(match (u, d) {
            (UnaryOp::Neg, DType::I64) => self.b.ins().ineg(x),
            (UnaryOp::Abs, DType::I64) => self.b.ins().iabs(x),
            (UnaryOp::Neg, _) => self.b.ins().fneg(x),
            (UnaryOp::Abs, _) => self.b.ins().fabs(x),
            (UnaryOp::Sqrt, _) => self.b.ins().sqrt(x),
            (UnaryOp::Recip, DType::F32) => {
                let one = self.b.ins().f32const(1.0);
                let one = if ty.is_vector() {
                    self.b.ins().splat(ty, one)
                } else {
                    one
                };
                self.b.ins().fdiv(one, x)
            }
            (UnaryOp::Recip, _) => {
                let one = self.b.ins().f64const(1.0);
                let one = if ty.is_vector() {
                    self.b.ins().splat(ty, one)
                } else {
                    one
                };
                self.b.ins().fdiv(one, x)
            }
            (UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid, DType::F32)
                if !self.extern_math =>
            {
                let mut m = Lanes {
                    b: &mut *self.b,
                    fty: ty,
                    fma: self.fma,
                };
                match u {
                    UnaryOp::Exp => m.exp(x),
                    UnaryOp::Log => m.log(x),
                    UnaryOp::Tanh => m.tanh(x),
                    _ => m.sigmoid(x),
                }
            }
            (UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid, _) => {
                let name = format!("kiln_{}_{}", crate::kernel::print::unary_name(u), d.name());
                self.per_lane(&name, &[x])?
            }
        })
    }

    /// Calls a runtime helper on each lane (or once, for scalars).
    fn per_lane(&mut self, name: &str, args: &[Value]) -> R<Value> {
        let ty = self.b.func.dfg.value_type(args[0]);
        if !ty.is_vector() {
            return self.call(name, args);
        }
        let mut out: Option<Value> = None;
        for lane in 0..ty.lane_count() {
            let la: Vec<Value> = args
                .iter()
                .map(|&a| self.b.ins().extractlane(a, lane as u8))
                .collect();
            let r = self.call(name, &la)?;
            out = Some(match out {
                None => self.b.ins().splat(ty, r),
                Some(v) => self.b.ins().insertlane(v, r, lane as u8),
            });
        }
        out.ok_or_else(|| "vector without lanes".into())
    }

    fn binary(&mut self, op: BinaryOp, d: DType, x: Value, y: Value) -> R<Value> {
        let float = d.is_float();
        Ok(match (op, float) {
            (BinaryOp::Add, true) => self.b.ins().fadd(x, y),
            (BinaryOp::Sub, true) => self.b.ins().fsub(x, y),
            (BinaryOp::Mul, true) => self.b.ins().fmul(x, y),
            (BinaryOp::Div, true) => self.b.ins().fdiv(x, y),
            (BinaryOp::Max, true) => self.b.ins().fmax(x, y),
            (BinaryOp::Min, true) => self.b.ins().fmin(x, y),
            (BinaryOp::Pow, true) => {
                let name = format!("kiln_pow_{}", d.name());
                self.per_lane(&name, &[x, y])?
            }
            (BinaryOp::Add, false) => self.b.ins().iadd(x, y),
            (BinaryOp::Sub, false) => self.b.ins().isub(x, y),
            (BinaryOp::Mul, false) => self.b.ins().imul(x, y),
            (BinaryOp::Max, false) => self.b.ins().smax(x, y),
            (BinaryOp::Min, false) => self.b.ins().smin(x, y),
            (BinaryOp::Div | BinaryOp::Pow, false) => {
                return Err(format!("{op:?} on {d}"));
            }
        })
    }

    /// `kiln_ir::Data::cast` on a scalar.
    fn cast(&mut self, from: DType, to: DType, x: Value) -> Value {
        let ins = self.b.ins();
        match (from, to) {
            _ if from == to => x,
            (DType::F32, DType::F64) => ins.fpromote(types::F64, x),
            (DType::F64, DType::F32) => ins.fdemote(types::F32, x),
            (DType::F32 | DType::F64, DType::I64) => ins.fcvt_to_sint_sat(types::I64, x),
            (DType::I64, DType::F32 | DType::F64) => ins.fcvt_from_sint(sty(to), x),
            (DType::F32, DType::Bool) => {
                let z = self.b.ins().f32const(0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, x, z)
            }
            (DType::F64, DType::Bool) => {
                let z = self.b.ins().f64const(0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, x, z)
            }
            (DType::I64, DType::Bool) => ins.icmp_imm_s(IntCC::NotEqual, x, 0),
            (DType::Bool, DType::I64) => ins.uextend(types::I64, x),
            (DType::Bool, DType::F32 | DType::F64) => {
                let w = self.b.ins().uextend(types::I32, x);
                self.b.ins().fcvt_from_sint(sty(to), w)
            }
            _ => unreachable!("all pairs of distinct dtypes are covered"),
        }
    }

    // ----- vector ops ---------------------------------------------------------------------

    fn vop(&mut self, d: DType, op: &KOp) -> R<Value> {
        let v = self.vvar.ok_or("vector op outside a vector loop")?;
        Ok(match op {
            KOp::Const(s) => {
                let c = self.scalar_const(*s);
                self.splat(d, c)?
            }
            KOp::Load { buf, index, guard } => self.vload(d, v, *buf, index, *guard)?,
            KOp::Unary(u, a) => {
                let x = self.vval(*a)?;
                self.unary(*u, d, x)?
            }
            KOp::Binary(bop, x, y) => {
                let (x, y) = (self.vval(*x)?, self.vval(*y)?);
                self.binary(*bop, d, x, y)?
            }
            KOp::Compare(c, x, y) => {
                let od = self.k.vals[x.0 as usize];
                let (x, y) = (self.vval(*x)?, self.vval(*y)?);
                if od.is_float() {
                    self.b.ins().fcmp(float_cc(*c), x, y)
                } else {
                    // Masks: false < true.
                    let ins = self.b.ins();
                    match c {
                        CmpOp::Eq => {
                            let t = ins.bxor(x, y);
                            self.b.ins().bnot(t)
                        }
                        CmpOp::Ne => ins.bxor(x, y),
                        CmpOp::Lt => ins.band_not(y, x),
                        CmpOp::Le => ins.bor_not(y, x),
                        CmpOp::Gt => ins.band_not(x, y),
                        CmpOp::Ge => ins.bor_not(x, y),
                    }
                }
            }
            KOp::Select(c, x, y) => {
                let (c, x, y) = (self.vval(*c)?, self.vval(*x)?, self.vval(*y)?);
                let m = if d.is_float() {
                    let ty = self.vty(d)?;
                    self.b.ins().bitcast(ty, Self::bitcast_flags(), c)
                } else {
                    c
                };
                self.b.ins().bitselect(m, x, y)
            }
            KOp::Cast(to, x) => {
                let from = self.k.vals[x.0 as usize];
                let xv = self.vval(*x)?;
                match (from, *to) {
                    (f, t) if f == t => xv,
                    (f, DType::Bool) if f.is_float() => {
                        let fty = self.vty(f)?;
                        let z = self.scalar_const(Scalar::from_f64(f, 0.0));
                        let z = self.b.ins().splat(fty, z);
                        self.b.ins().fcmp(FloatCC::NotEqual, xv, z)
                    }
                    (DType::Bool, t) if t.is_float() => {
                        let fty = self.vty(t)?;
                        let one = self.scalar_const(Scalar::from_f64(t, 1.0));
                        let one = self.b.ins().splat(fty, one);
                        let m = self.b.ins().bitcast(fty, Self::bitcast_flags(), xv);
                        self.b.ins().band(m, one)
                    }
                    (f, t) => return Err(format!("cast {f} to {t} in a vector loop")),
                }
            }
            KOp::InRange { index, lo, hi } => {
                if !index.mentions(v, &self.k.defs) {
                    let i = self.ix(index, None)?;
                    let c = self.in_range(i, *lo, *hi);
                    self.splat(DType::Bool, c)?
                } else {
                    let (mty, lane_ty) = self.mask_ty();
                    let base = self.vars[v.0 as usize].ok_or("vector variable not in scope")?;
                    let mut out: Option<Value> = None;
                    for lane in 0..self.lanes {
                        let vl = self.b.ins().iadd_imm_s(base, i64::from(lane));
                        let i = self.ix(index, Some((v, vl)))?;
                        let c = self.in_range(i, *lo, *hi);
                        let m = self.b.ins().bmask(lane_ty, c);
                        out = Some(match out {
                            None => self.b.ins().splat(mty, m),
                            Some(o) => self.b.ins().insertlane(o, m, lane as u8),
                        });
                    }
                    out.ok_or("no lanes")?
                }
            }
            KOp::And(x, y) => {
                let (x, y) = (self.vval(*x)?, self.vval(*y)?);
                self.b.ins().band(x, y)
            }
            KOp::ReadAcc(a) => return Err(format!("read of {a} inside a vector loop")),
        })
    }

    fn vload(&mut self, d: DType, v: Var, buf: Buf, index: &Ix, guard: Option<Val>) -> R<Value> {
        let coef = index.linear_coef(v);
        if guard.is_none() && coef == Some(0) {
            let idx = self.ix(index, None)?;
            let x = self.load_scalar(buf, idx);
            return self.splat(d, x);
        }
        if guard.is_none() && coef == Some(1) && d.is_float() {
            let ty = self.vty(d)?;
            let idx = self.ix(index, None)?;
            let a = self.addr(buf, idx);
            let fl = self.load_flags(buf, true);
            return Ok(self.b.ins().load(ty, fl, a, 0));
        }
        // Gather.
        let ty = self.vty(d)?;
        let lane_ty = self.mask_ty().1;
        let gmask = match guard {
            Some(g) => Some(self.vval(g)?),
            None => None,
        };
        let base = self.vars[v.0 as usize].ok_or("vector variable not in scope")?;
        let mut out: Option<Value> = None;
        for lane in 0..self.lanes {
            let vl = self.b.ins().iadd_imm_s(base, i64::from(lane));
            let mut idx = self.ix(index, Some((v, vl)))?;
            let g = match gmask {
                Some(m) => {
                    let gl = self.b.ins().extractlane(m, lane as u8);
                    idx = self.clamp(buf, idx);
                    Some(self.b.ins().icmp_imm_s(IntCC::NotEqual, gl, 0))
                }
                None => None,
            };
            let mut x = self.load_scalar(buf, idx);
            if let Some(g) = g {
                let z = self.scalar_const(Scalar::from_f64(d, 0.0));
                x = self.b.ins().select(g, x, z);
            }
            let lanev = if d == DType::Bool {
                self.b.ins().bmask(lane_ty, x)
            } else {
                x
            };
            out = Some(match out {
                None => self.b.ins().splat(ty, lanev),
                Some(o) => self.b.ins().insertlane(o, lanev, lane as u8),
            });
        }
        out.ok_or_else(|| "no lanes".into())
    }
}

fn float_cc(c: CmpOp) -> FloatCC {
    match c {
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
    }
}

fn int_cc(c: CmpOp, signed: bool) -> IntCC {
    match (c, signed) {
        (CmpOp::Eq, _) => IntCC::Equal,
        (CmpOp::Ne, _) => IntCC::NotEqual,
        (CmpOp::Lt, true) => IntCC::SignedLessThan,
        (CmpOp::Le, true) => IntCC::SignedLessThanOrEqual,
        (CmpOp::Gt, true) => IntCC::SignedGreaterThan,
        (CmpOp::Ge, true) => IntCC::SignedGreaterThanOrEqual,
        (CmpOp::Lt, false) => IntCC::UnsignedLessThan,
        (CmpOp::Le, false) => IntCC::UnsignedLessThanOrEqual,
        (CmpOp::Gt, false) => IntCC::UnsignedGreaterThan,
        (CmpOp::Ge, false) => IntCC::UnsignedGreaterThanOrEqual,
    }
}
