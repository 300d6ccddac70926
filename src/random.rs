//! Seedable, counter-based random numbers (Philox 4x32-10).
//!
//! Counter-based so that a stream can be split and replayed exactly: the n-th block of a
//! generator depends only on (seed, n). The same construction runs on GPUs (it is cuRAND's and
//! PyTorch's CUDA generator), which lets later backends draw identical numbers in kernels.

use std::cell::RefCell;

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox 4x32 with 10 rounds over a 128-bit counter and a 64-bit key.
fn philox(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// A random number generator with an explicit seed (`torch.Generator().manual_seed(s)`).
#[derive(Clone, Debug)]
pub struct Generator {
    key: [u32; 2],
    counter: u64,
    buf: [u32; 4],
    used: usize,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            key: [seed as u32, (seed >> 32) as u32],
            counter: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    /// Restarts the stream from `seed`.
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Generator::new(seed);
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            let c = self.counter;
            self.buf = philox([c as u32, (c >> 32) as u32, 0, 0], self.key);
            self.counter += 1;
            self.used = 0;
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    /// Uniform in [0, 1) with 24 random bits (every f32 value on the grid 2^-24).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64;
        let lo = (self.next_u32() >> 6) as u64;
        ((hi << 26) | lo) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Standard normal by the Box–Muller transform.
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform_f64(); // (0, 1]: log is finite
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in `[0, n)` (Lemire's method; unbiased).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Generator::below(0)");
        loop {
            let x = ((self.next_u32() as u64) << 32) | self.next_u32() as u64;
            let m = (x as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }
}

thread_local! {
    static DEFAULT: RefCell<Generator> = RefCell::new(Generator::new(0x5EED));
}

/// Seeds this thread's default generator (`torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    DEFAULT.with(|g| g.borrow_mut().manual_seed(seed));
}

/// Runs `f` with this thread's default generator.
pub fn with_default<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    DEFAULT.with(|g| f(&mut g.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_published_known_answer() {
        // Random123's kat_vectors: philox4x32_10 with counter and key all ones bits.
        let out = philox([0xffff_ffff; 4], [0xffff_ffff; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn seeded_streams_repeat_and_normals_have_unit_variance() {
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        let xs: Vec<f64> = (0..20000).map(|_| a.normal()).collect();
        let ys: Vec<f64> = (0..20000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
        assert!((0..1000).all(|_| a.below(10) < 10));
    }
}
