//! Index expressions: 64-bit integer arithmetic over loop variables.
//!
//! Every memory access of a kernel addresses its buffer with an [`Ix`]. Movement ops
//! (reshape, permute, expand, slice, pad, concat) are not copies: the scheduler composes them
//! into the index expressions of the loads that read through them. Permute, expand and slice
//! keep expressions affine; reshape needs floor division and remainder by constants, which
//! [`Ix::div`] and [`Ix::rem`] simplify away whenever the ranges of the variables allow
//! (merging or splitting contiguous axes, the common case, leaves an affine expression).
//!
//! The canonical form is `c + Σ coef·atom`, terms sorted by atom, no zero coefficient, so two
//! equal expressions built the same way compare equal (the scheduler memoises on them) and
//! [`Ix::range`] can bound an expression by interval arithmetic: that bound is the proof,
//! checked by [`crate::kernel::verify`], that an unguarded access stays inside its buffer.
//!
//! A variable is either a loop variable, or a *derived* one ([`crate::kernel::Kernel::defs`]):
//! a name for an expression whose range is known only under a guard (the source index of a
//! pad or concat, valid where the element is not padding). Simplifying with that range is
//! exact wherever the guard holds, and only guarded accesses may use derived variables.

use std::fmt;

/// A variable of a kernel, numbered densely from 0. Its range is `0..extent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u32);

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// A non-constant summand of an [`Ix`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    Var(Var),
    /// Floor division by a constant `>= 2`.
    Div(Box<Ix>, i64),
    /// Euclidean remainder by a constant `>= 2` (in `0..d`).
    Mod(Box<Ix>, i64),
}

/// An index expression `c + Σ coef·atom` in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ix {
    pub terms: Vec<(Atom, i64)>,
    pub c: i64,
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

impl Ix {
    pub fn constant(c: i64) -> Ix {
        Ix {
            terms: Vec::new(),
            c,
        }
    }

    pub fn var(v: Var) -> Ix {
        Ix::atom(Atom::Var(v))
    }

    fn atom(a: Atom) -> Ix {
        Ix {
            terms: vec![(a, 1)],
            c: 0,
        }
    }

    /// The value if the expression is a constant.
    pub fn as_const(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.c)
    }

    /// `self + other`.
    pub fn add(&self, other: &Ix) -> Ix {
        let mut terms = self.terms.clone();
        terms.extend(other.terms.iter().cloned());
        Ix::normalize(terms, self.c + other.c)
    }

    pub fn add_const(&self, k: i64) -> Ix {
        Ix {
            terms: self.terms.clone(),
            c: self.c + k,
        }
    }

    /// `self * k`.
    pub fn scale(&self, k: i64) -> Ix {
        if k == 0 {
            return Ix::constant(0);
        }
        Ix {
            terms: self.terms.iter().map(|(a, c)| (a.clone(), c * k)).collect(),
            c: self.c * k,
        }
    }

    /// Sorts and merges terms, drops zero coefficients, and folds `(e / m)·k·m + (e % m)·k`
    /// back into `e·k` (the pair a reshape that splits and re-merges an axis leaves).
    fn normalize(mut terms: Vec<(Atom, i64)>, c: i64) -> Ix {
        terms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Atom, i64)> = Vec::with_capacity(terms.len());
        for (a, k) in terms {
            match merged.last_mut() {
                Some((last, lk)) if *last == a => *lk += k,
                _ => merged.push((a, k)),
            }
        }
        merged.retain(|(_, k)| *k != 0);
        for i in 0..merged.len() {
            let (Atom::Mod(e, m), k) = &merged[i] else {
                continue;
            };
            let (e, m, k) = ((**e).clone(), *m, *k);
            let div = Atom::Div(Box::new(e.clone()), m);
            if let Some(j) = merged.iter().position(|(a, kk)| *a == div && *kk == k * m) {
                let mut rest: Vec<(Atom, i64)> = merged
                    .iter()
                    .enumerate()
                    .filter(|&(t, _)| t != i && t != j)
                    .map(|(_, x)| x.clone())
                    .collect();
                let scaled = e.scale(k);
                rest.extend(scaled.terms);
                return Ix::normalize(rest, c + scaled.c);
            }
        }
        Ix { terms: merged, c }
    }

    /// Inclusive bounds `(lo, hi)` of the expression over `0 <= var < extents[var]`.
    /// A variable of extent 0 never takes a value; it is bounded by `[0, 0]` here and its
    /// loop runs no iteration.
    pub fn range(&self, extents: &[u64]) -> (i64, i64) {
        let (mut lo, mut hi) = (self.c, self.c);
        for (a, k) in &self.terms {
            let (alo, ahi) = a.range(extents);
            if *k >= 0 {
                lo += k * alo;
                hi += k * ahi;
            } else {
                lo += k * ahi;
                hi += k * alo;
            }
        }
        (lo, hi)
    }

    /// Splits `self = g*b + s` with `g > 1` dividing `d` and every coefficient of `b`, and
    /// `0 <= s < g`; returns `(g, b)`.
    fn split_common(&self, d: i64, extents: &[u64]) -> Option<(i64, Ix)> {
        // Terms by decreasing |coefficient|: the large ones form `g*b`, the rest `s`.
        let mut order: Vec<usize> = (0..self.terms.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.terms[i].1.unsigned_abs()));
        let mut g = d;
        for split in 1..=order.len() {
            g = gcd(g, self.terms[order[split - 1]].1);
            if g <= 1 {
                return None;
            }
            let small_terms: Vec<(Atom, i64)> = order[split..]
                .iter()
                .map(|&i| self.terms[i].clone())
                .collect();
            let small = Ix::normalize(small_terms, self.c.rem_euclid(g));
            let (lo, hi) = small.range(extents);
            if lo >= 0 && hi < g {
                let big_terms: Vec<(Atom, i64)> = order[..split]
                    .iter()
                    .map(|&i| (self.terms[i].0.clone(), self.terms[i].1 / g))
                    .collect();
                return Some((g, Ix::normalize(big_terms, self.c.div_euclid(g))));
            }
        }
        None
    }

    /// Floor division by a constant `d >= 1`, simplified with the variables' ranges.
    pub fn div(&self, d: i64, extents: &[u64]) -> Ix {
        assert!(d >= 1, "index division by {d}");
        if d == 1 {
            return self.clone();
        }
        // self = d*q + r, with the terms whose coefficient d divides in q.
        let mut q_terms = Vec::new();
        let mut r_terms = Vec::new();
        for (a, k) in &self.terms {
            if k % d == 0 {
                q_terms.push((a.clone(), k / d));
            } else {
                r_terms.push((a.clone(), *k));
            }
        }
        let q = Ix::normalize(q_terms, self.c.div_euclid(d));
        let r = Ix::normalize(r_terms, self.c.rem_euclid(d));
        // floor((d*q + r) / d) = q + floor(r / d)
        let (lo, hi) = r.range(extents);
        if lo.div_euclid(d) == hi.div_euclid(d) {
            return q.add_const(lo.div_euclid(d));
        }
        // r = g*b + s with g | d and 0 <= s < g: floor(r / d) = floor(b / (d/g)).
        if let Some((g, b)) = r.split_common(d, extents) {
            return q.add(&b.div(d / g, extents));
        }
        // floor(floor(e / a) / d) = floor(e / (a*d)).
        let inner = if let ([(Atom::Div(e, a), 1)], 0) = (r.terms.as_slice(), r.c) {
            (**e).div(a * d, extents)
        } else {
            Ix::atom(Atom::Div(Box::new(r), d))
        };
        q.add(&inner)
    }

    /// Euclidean remainder by a constant `d >= 1`, simplified with the variables' ranges.
    pub fn rem(&self, d: i64, extents: &[u64]) -> Ix {
        assert!(d >= 1, "index remainder by {d}");
        if d == 1 {
            return Ix::constant(0);
        }
        let terms: Vec<(Atom, i64)> = self
            .terms
            .iter()
            .filter(|(_, k)| k % d != 0)
            .cloned()
            .collect();
        let r = Ix::normalize(terms, self.c.rem_euclid(d));
        let (lo, hi) = r.range(extents);
        if lo.div_euclid(d) == hi.div_euclid(d) {
            return r.add_const(-lo.div_euclid(d) * d);
        }
        // r = g*b + s with g | d, 0 <= s < g: r mod d = g*(b mod d/g) + s.
        if let Some((g, b)) = r.split_common(d, extents) {
            let s = r.add(&b.scale(-g));
            return b.rem(d / g, extents).scale(g).add(&s);
        }
        // (e mod a) mod d = e mod d when d divides a.
        if let ([(Atom::Mod(e, a), 1)], 0) = (r.terms.as_slice(), r.c) {
            if a % d == 0 {
                return (**e).rem(d, extents);
            }
        }
        Ix::atom(Atom::Mod(Box::new(r), d))
    }

    /// The coefficient of `v` if `v` occurs only linearly (not inside a division or
    /// remainder); `Some(0)` if it does not occur at all. Derived variables are opaque here:
    /// callers use it only on expressions without them.
    pub fn linear_coef(&self, v: Var) -> Option<i64> {
        let mut coef = 0;
        for (a, k) in &self.terms {
            match a {
                Atom::Var(w) if *w == v => coef = *k,
                Atom::Var(_) => {}
                Atom::Div(e, _) | Atom::Mod(e, _) => {
                    if e.mentions(v, &[]) {
                        return None;
                    }
                }
            }
        }
        Some(coef)
    }

    /// Whether `v` occurs, directly or through a derived variable's definition (`defs`).
    pub fn mentions(&self, v: Var, defs: &[Option<Ix>]) -> bool {
        self.terms.iter().any(|(a, _)| match a {
            Atom::Var(w) if *w == v => true,
            Atom::Var(w) => match defs.get(w.0 as usize) {
                Some(Some(d)) => d.mentions(v, defs),
                _ => false,
            },
            Atom::Div(e, _) | Atom::Mod(e, _) => e.mentions(v, defs),
        })
    }

    /// Calls `f` on every variable occurring directly (not through definitions).
    pub fn for_each_var(&self, f: &mut impl FnMut(Var)) {
        for (a, _) in &self.terms {
            match a {
                Atom::Var(w) => f(*w),
                Atom::Div(e, _) | Atom::Mod(e, _) => e.for_each_var(f),
            }
        }
    }

    /// The value for the loop variables' values `vars`, derived variables computed from their
    /// definitions `defs` (Euclidean division).
    pub fn eval(&self, vars: &[i64], defs: &[Option<Ix>]) -> i64 {
        let mut s = self.c;
        for (a, k) in &self.terms {
            s = s.wrapping_add(k.wrapping_mul(a.eval(vars, defs)));
        }
        s
    }
}

impl Atom {
    fn range(&self, extents: &[u64]) -> (i64, i64) {
        match self {
            Atom::Var(v) => (
                0,
                (extents.get(v.0 as usize).copied().unwrap_or(1) as i64 - 1).max(0),
            ),
            Atom::Div(e, d) => {
                let (lo, hi) = e.range(extents);
                (lo.div_euclid(*d), hi.div_euclid(*d))
            }
            Atom::Mod(e, d) => {
                let (lo, hi) = e.range(extents);
                if lo.div_euclid(*d) == hi.div_euclid(*d) {
                    (lo.rem_euclid(*d), hi.rem_euclid(*d))
                } else {
                    (0, d - 1)
                }
            }
        }
    }

    fn eval(&self, vars: &[i64], defs: &[Option<Ix>]) -> i64 {
        match self {
            Atom::Var(v) => match defs.get(v.0 as usize) {
                Some(Some(d)) => d.eval(vars, defs),
                _ => vars[v.0 as usize],
            },
            Atom::Div(e, d) => e.eval(vars, defs).div_euclid(*d),
            Atom::Mod(e, d) => e.eval(vars, defs).rem_euclid(*d),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let simple = |e: &Ix| e.terms.len() == 1 && e.c == 0 && e.terms[0].1 == 1;
        match self {
            Atom::Var(v) => write!(f, "{v}"),
            Atom::Div(e, d) if simple(e) => write!(f, "{e}/{d}"),
            Atom::Div(e, d) => write!(f, "({e})/{d}"),
            Atom::Mod(e, d) if simple(e) => write!(f, "{e}%{d}"),
            Atom::Mod(e, d) => write!(f, "({e})%{d}"),
        }
    }
}

impl fmt::Display for Ix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (a, k) in &self.terms {
            let mag = k.abs();
            if first {
                if *k < 0 {
                    f.write_str("-")?;
                }
            } else {
                f.write_str(if *k < 0 { " - " } else { " + " })?;
            }
            first = false;
            if mag == 1 {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}*{mag}")?;
            }
        }
        if first {
            write!(f, "{}", self.c)
        } else if self.c > 0 {
            write!(f, " + {}", self.c)
        } else if self.c < 0 {
            write!(f, " - {}", -self.c)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(i: u32) -> Ix {
        Ix::var(Var(i))
    }

    #[test]
    fn reshape_split_and_merge_simplifies_to_affine() {
        // i0 in 0..4, i1 in 0..6: flat = 6*i0 + i1; view as [24] then back as [4, 6].
        let ext = [4, 6];
        let flat = v(0).scale(6).add(&v(1));
        assert_eq!(flat.div(6, &ext), v(0));
        assert_eq!(flat.rem(6, &ext), v(1));
        // [4,6] -> [2,2,6]: axis sizes 2,2 from i0
        let a = flat.div(12, &ext);
        assert_eq!(format!("{a}"), "i0/2");
        let b = flat.div(6, &ext).rem(2, &ext);
        assert_eq!(format!("{b}"), "i0%2");
        // and back: 12*(i0/2) + 6*(i0%2) + i1 = 6*i0 + i1
        let back = a.scale(12).add(&b.scale(6)).add(&v(1));
        assert_eq!(back, flat);
    }

    #[test]
    fn common_factors_split_divisions() {
        // i0 in 0..27, i1 in 0..27: (28*i0 + i1) / 56 = i0 / 2, (28*i0 + i1) % 56 = 28*(i0%2) + i1
        let ext = [27, 27];
        let e = v(0).scale(28).add(&v(1));
        assert_eq!(format!("{}", e.div(56, &ext)), "i0/2");
        assert_eq!(format!("{}", e.rem(56, &ext)), "i1 + i0%2*28");
    }

    #[test]
    fn ranges_bound_divisions_and_remainders() {
        let ext = [10, 3];
        let e = v(0).scale(3).add(&v(1)).add_const(-2);
        assert_eq!(e.range(&ext), (-2, 27));
        assert_eq!(e.rem(7, &ext).range(&ext), (0, 6));
        assert_eq!(v(1).div(5, &ext), Ix::constant(0));
        assert_eq!(v(1).rem(5, &ext), v(1));
        let d = v(0).div(4, &ext).div(2, &ext);
        assert_eq!(d, v(0).div(8, &ext));
    }

    #[test]
    fn simplification_preserves_values() {
        let ext = [7, 5, 3];
        let exprs = [
            v(0).scale(5).add(&v(1)).add_const(-3),
            v(0).scale(15).add(&v(1).scale(3)).add(&v(2)),
            v(0).scale(6).add(&v(2).scale(2)).add_const(1),
            v(1).scale(-4).add(&v(0)).add_const(20),
        ];
        for e in &exprs {
            for d in [2, 3, 4, 6, 7, 15, 35] {
                let (q, r) = (e.div(d, &ext), e.rem(d, &ext));
                for i in 0..7 {
                    for j in 0..5 {
                        for k in 0..3 {
                            let x = e.eval(&[i, j, k], &[]);
                            assert_eq!(q.eval(&[i, j, k], &[]), x.div_euclid(d), "{e} / {d}");
                            assert_eq!(r.eval(&[i, j, k], &[]), x.rem_euclid(d), "{e} % {d}");
                        }
                    }
                }
            }
        }
    }
}
