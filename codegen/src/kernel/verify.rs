//! The kernel verifier: well-formedness, types, and the bounds proof.
//!
//! # Why generated code cannot access memory out of bounds
//!
//! 1. Every loop runs `var` over `0..extent` (the parallel outer loop over a sub-range the
//!    runtime checks lies within it; a vector loop only while all its lanes are below the
//!    extent), so each variable stays in the range [`Ix::range`] assumes.
//! 2. This verifier computes, by interval arithmetic over those ranges, bounds of every
//!    store index and of every unguarded load index, and rejects the kernel unless they lie in
//!    `0..len` of the buffer's declared length. A kernel that fails is a scheduler bug and
//!    is never compiled.
//! 3. A guarded load's index is clamped into `0..len` by the JIT before the access (its value
//!    is discarded where the guard is false), so it needs no proof; the verifier only
//!    requires `len >= 1`. The bounds-checked interpreter ([`super::interp`]) instead checks
//!    the unclamped index wherever the guard is true, so tests catch a wrong guard.
//! 4. Before each run, the runtime checks that every buffer handed to a kernel holds at least
//!    `len` elements of the declared type (bindings are type-checked; temporaries are
//!    allocated from the same plan).

use super::*;

/// Checks a kernel; the error names the statement.
pub fn verify(k: &Kernel) -> Result<(), String> {
    if k.defs.len() != k.vars.len() {
        return Err(format!(
            "kernel {}: {} definitions for {} variables",
            k.name,
            k.defs.len(),
            k.vars.len()
        ));
    }
    let mut v = Verifier {
        k,
        defined: vec![false; k.vals.len()],
        var_defined: vec![false; k.vars.len()],
        in_scope: Vec::new(),
        dead: false,
    };
    match &k.body {
        Body::Loops(stmts) => {
            let parallel = stmts
                .iter()
                .any(|s| matches!(s, Stmt::Loop(l) if l.parallel));
            if parallel && stmts.len() != 1 {
                return Err(format!(
                    "kernel {}: a parallel loop must be the only top-level statement",
                    k.name
                ));
            }
            v.stmts(stmts, 0)
        }
        Body::Call(c) => {
            for b in c.inputs.iter().chain([&c.output]) {
                v.param(*b)?;
            }
            let out = v.param(c.output)?;
            if out.access == Access::Read {
                return Err(format!("{}: call writes read-only {}", k.name, c.output));
            }
            Ok(())
        }
    }
}

struct Verifier<'a> {
    k: &'a Kernel,
    defined: Vec<bool>,
    var_defined: Vec<bool>,
    /// Variables of the enclosing loops.
    in_scope: Vec<Var>,
    /// Inside a loop of extent 0: nothing here ever runs.
    dead: bool,
}

impl Verifier<'_> {
    fn err<T>(&self, msg: String) -> Result<T, String> {
        Err(format!("kernel {}: {msg}", self.k.name))
    }

    fn param(&self, b: Buf) -> Result<&Param, String> {
        match self.k.params.get(b.0 as usize) {
            Some(p) => Ok(p),
            None => self.err(format!("no buffer {b}")),
        }
    }

    fn ty(&self, v: Val) -> Result<DType, String> {
        match self.defined.get(v.0 as usize) {
            Some(true) => Ok(self.k.vals[v.0 as usize]),
            _ => self.err(format!("{v} used before it is defined")),
        }
    }

    fn index(&self, ix: &Ix, len: u64, what: &str, check: bool) -> Result<(), String> {
        self.vars_in_scope(ix)?;
        if !check || self.dead {
            return Ok(());
        }
        let mut derived = None;
        ix.for_each_var(&mut |v| {
            if matches!(self.k.defs.get(v.0 as usize), Some(Some(_))) {
                derived = Some(v);
            }
        });
        if let Some(v) = derived {
            return self.err(format!(
                "{what} index [{ix}] uses derived {v}, whose range holds only under a guard"
            ));
        }
        let (lo, hi) = ix.range(&self.k.vars);
        if lo < 0 || hi >= len as i64 {
            return self.err(format!(
                "{what} index [{ix}] spans {lo}..={hi}, outside 0..{len}"
            ));
        }
        Ok(())
    }

    fn vars_in_scope(&self, ix: &Ix) -> Result<(), String> {
        for (a, _) in &ix.terms {
            match a {
                Atom::Var(v) => match self.k.defs.get(v.0 as usize) {
                    Some(Some(d)) => self.vars_in_scope(d)?,
                    _ => {
                        if !self.in_scope.contains(v) {
                            return self.err(format!("{v} used outside its loop in [{ix}]"));
                        }
                    }
                },
                Atom::Div(e, d) | Atom::Mod(e, d) => {
                    if *d < 2 {
                        return self.err(format!("division by {d} in [{ix}]"));
                    }
                    self.vars_in_scope(e)?;
                }
            }
        }
        Ok(())
    }

    fn stmts(&mut self, stmts: &[Stmt], depth: usize) -> Result<(), String> {
        for s in stmts {
            match s {
                Stmt::Loop(l) => {
                    let vi = l.var.0 as usize;
                    if vi >= self.k.vars.len()
                        || self.var_defined[vi]
                        || matches!(self.k.defs.get(vi), Some(Some(_)))
                    {
                        return self
                            .err(format!("loop variable {} redefined or undeclared", l.var));
                    }
                    if self.k.vars[vi] != l.extent {
                        return self.err(format!(
                            "loop {} extent disagrees with its declaration",
                            l.var
                        ));
                    }
                    if l.parallel && depth != 0 {
                        return self.err(format!("inner loop {} marked parallel", l.var));
                    }
                    if l.vector > 1 && l.body.iter().any(|s| matches!(s, Stmt::Loop(_))) {
                        return self.err(format!("loop {} is vectorised but not innermost", l.var));
                    }
                    self.var_defined[vi] = true;
                    self.in_scope.push(l.var);
                    let was_dead = self.dead;
                    self.dead |= l.extent == 0;
                    self.stmts(&l.body, depth + 1)?;
                    self.dead = was_dead;
                    self.in_scope.pop();
                }
                Stmt::Let(v, op) => {
                    let want = self.op_type(op)?;
                    let vi = v.0 as usize;
                    if vi >= self.k.vals.len() || self.defined[vi] {
                        return self.err(format!("{v} redefined or undeclared"));
                    }
                    if self.k.vals[vi] != want {
                        return self.err(format!(
                            "{v} declared {} but `{op}` gives {want}",
                            self.k.vals[vi]
                        ));
                    }
                    self.defined[vi] = true;
                }
                Stmt::Store { buf, index, value } => {
                    let p = self.param(*buf)?;
                    if p.access == Access::Read {
                        return self.err(format!("store to read-only {buf}"));
                    }
                    if self.ty(*value)? != p.dtype {
                        return self.err(format!("store of {value} into {} {buf}", p.dtype));
                    }
                    self.index(index, p.len, &format!("store {buf}"), true)?;
                }
                Stmt::AccInit(a) => {
                    self.acc(*a)?;
                }
                Stmt::AccUpdate(a, v) => {
                    let d = self.acc(*a)?;
                    if self.ty(*v)? != d.dtype {
                        return self.err(format!("{a} updated with {v} of another type"));
                    }
                }
            }
        }
        Ok(())
    }

    fn acc(&self, a: Acc) -> Result<AccDecl, String> {
        match self.k.accs.get(a.0 as usize) {
            Some(d) => Ok(*d),
            None => self.err(format!("no accumulator {a}")),
        }
    }

    fn op_type(&self, op: &KOp) -> Result<DType, String> {
        Ok(match op {
            KOp::Const(s) => s.dtype(),
            KOp::Load { buf, index, guard } => {
                let p = self.param(*buf)?;
                match guard {
                    Some(g) => {
                        if self.ty(*g)? != DType::Bool {
                            return self.err(format!("guard {g} is not bool"));
                        }
                        if p.len == 0 && !self.dead {
                            return self.err(format!("guarded load from empty {buf}"));
                        }
                        self.index(index, p.len, &format!("load {buf}"), false)?;
                    }
                    None => self.index(index, p.len, &format!("load {buf}"), true)?,
                }
                p.dtype
            }
            KOp::Unary(u, a) => {
                let d = self.ty(*a)?;
                let ok = match u {
                    UnaryOp::Neg | UnaryOp::Abs => d.is_numeric(),
                    _ => d.is_float(),
                };
                if !ok {
                    return self.err(format!("{u:?} on {d}"));
                }
                d
            }
            KOp::Binary(b, x, y) => {
                let (dx, dy) = (self.ty(*x)?, self.ty(*y)?);
                let ok = match b {
                    BinaryOp::Div | BinaryOp::Pow => dx.is_float(),
                    _ => dx.is_numeric(),
                };
                if dx != dy || !ok {
                    return self.err(format!("{b:?} on {dx} and {dy}"));
                }
                dx
            }
            KOp::Compare(_, x, y) => {
                if self.ty(*x)? != self.ty(*y)? {
                    return self.err(format!("comparison of {x} and {y} of different types"));
                }
                DType::Bool
            }
            KOp::Select(c, x, y) => {
                let (dc, dx, dy) = (self.ty(*c)?, self.ty(*x)?, self.ty(*y)?);
                if dc != DType::Bool || dx != dy {
                    return self.err(format!("select on {dc}, {dx}, {dy}"));
                }
                dx
            }
            KOp::Cast(d, x) => {
                self.ty(*x)?;
                *d
            }
            KOp::InRange { index, .. } => {
                self.vars_in_scope(index)?;
                DType::Bool
            }
            KOp::And(x, y) => {
                if self.ty(*x)? != DType::Bool || self.ty(*y)? != DType::Bool {
                    return self.err(format!("and of non-bools {x}, {y}"));
                }
                DType::Bool
            }
            KOp::ReadAcc(a) => self.acc(*a)?.dtype,
        })
    }
}
