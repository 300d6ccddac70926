//! The plain PyTorch-style loop (`zero_grad`, forward, `backward`, optimiser step) re-traces
//! every iteration; the JIT's program cache must make every iteration after the first free of
//! compilation. Alone in its own test binary: the cache counters are process-wide.

use kiln::functional::{self as F, Reduction};
use kiln::optim::Sgd;
use kiln::{DType, Generator, Tensor};

#[test]
fn the_plain_training_loop_hits_the_program_cache_from_its_second_iteration() {
    if kiln_codegen::Backend::from_env() != kiln_codegen::Backend::Jit {
        eprintln!("not checked: KILN_BACKEND selects the interpreter, which has no program cache");
        return;
    }
    let mut g = Generator::new(5);
    let w = Tensor::randn_with([3, 5], DType::F32, &mut g).requires_grad_(true);
    let b = Tensor::randn_with([3], DType::F32, &mut g).requires_grad_(true);
    let mut opt = Sgd::new(vec![w.clone(), b.clone()], 0.1).momentum(0.9);
    let mut data = Generator::new(6);
    let mut misses = Vec::new();
    for _ in 0..4 {
        let x = Tensor::randn_with([8, 5], DType::F32, &mut data);
        let y = Tensor::randn_with([8, 3], DType::F32, &mut data);
        opt.zero_grad();
        let loss = F::mse_loss(&F::linear(&x, &w, Some(&b)), &y, Reduction::Mean);
        loss.backward();
        opt.step().unwrap();
        assert!(loss.item().is_finite());
        misses.push(kiln_codegen::cache_stats().misses);
    }
    // The first iteration compiles its programs (forward+backward, the optimiser's update, which
    // creates its momentum buffers as zeros so its graph is the same at every step); every later
    // iteration only hits the cache.
    assert!(
        misses[0] > 0,
        "the first iteration compiled nothing: {misses:?}"
    );
    assert!(
        misses[1..].iter().all(|&m| m == misses[0]),
        "a later iteration compiled again: misses after each iteration {misses:?}"
    );
    assert!(kiln_codegen::cache_stats().hits > 0);
}
