//! Compiled steps (`kiln::compile`) and lazy gradients (`kiln::autograd::grad`) against the
//! eager API: the same training step, traced once and replayed, must give what running it
//! eagerly gives, step after step.

use kiln::functional::{self as F, Reduction};
use kiln::{DType, Generator, Tensor};

fn params(g: &mut Generator) -> (Tensor, Tensor) {
    let w = Tensor::randn_with([3, 5], DType::F32, g).requires_grad_(true);
    let b = Tensor::randn_with([3], DType::F32, g).requires_grad_(true);
    (w, b)
}

/// One SGD step written as a PyTorch user would: zero grads, forward, backward, update.
fn sgd_step(w: &Tensor, b: &Tensor, x: &Tensor, y: &Tensor) -> kiln::Result<Tensor> {
    w.zero_grad();
    b.zero_grad();
    let loss = F::mse_loss(&F::linear(x, w, Some(b)), y, Reduction::Mean);
    loss.try_backward(None)?;
    kiln::no_grad(|| -> kiln::Result<()> {
        let (gw, gb) = (w.grad().unwrap(), b.grad().unwrap());
        kiln::assign(&[(w, &w.sub(&gw.mul(0.1))), (b, &b.sub(&gb.mul(0.1)))])
    })?;
    Ok(loss)
}

#[test]
fn compiled_step_matches_eager_steps() {
    let mut g = Generator::new(3);
    let (w_e, b_e) = params(&mut g);
    let mut g = Generator::new(3);
    let (w_c, b_c) = params(&mut g);
    let mut data = Generator::new(9);
    let batches: Vec<(Tensor, Tensor)> = (0..4)
        .map(|_| {
            (
                Tensor::randn_with([8, 5], DType::F32, &mut data),
                Tensor::randn_with([8, 3], DType::F32, &mut data),
            )
        })
        .collect();

    let step = kiln::compile::compile(&[&batches[0].0, &batches[0].1], |ins| {
        Ok(vec![sgd_step(&w_c, &b_c, &ins[0], &ins[1])?])
    })
    .unwrap();
    // Tracing computed nothing and changed nothing.
    assert!(w_c.grad().is_none());
    assert_eq!(w_c.to_vec::<f32>(), w_e.to_vec::<f32>());

    for (x, y) in &batches {
        let eager = sgd_step(&w_e, &b_e, x, y).unwrap().item();
        let out = step.run(&[x, y]).unwrap();
        let compiled = out[0].item();
        assert!(
            (eager - compiled).abs() <= 1e-6 * eager.abs().max(1.0),
            "loss {eager} vs {compiled}"
        );
        for (a, b) in w_e.to_vec::<f32>().iter().zip(w_c.to_vec::<f32>()) {
            assert!((a - b).abs() <= 1e-5, "weights diverged: {a} vs {b}");
        }
    }
    // The program holds forward, backward and the update: params in, assignments out.
    let graph = step.graph();
    assert_eq!(graph.params.len(), 2);
    assert!(
        graph
            .outputs
            .keys()
            .filter(|k| k.starts_with("assign."))
            .count()
            == 2
    );
}

#[test]
fn lazy_grad_feeds_further_ops_and_matches_backward() {
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3]).requires_grad_(true);
    let y = x.mul(&x).sum_all(); // dy/dx = 2x
    let gx = kiln::autograd::grad(&y, &[&x], None)
        .unwrap()
        .remove(0)
        .unwrap();
    // A traced gradient is an ordinary tensor: use it in more ops.
    let z = gx.mul(0.5).add(1.0);
    assert_eq!(z.to_vec::<f32>(), vec![2.0, -1.0, 4.0]);
    assert!(
        x.grad().is_none(),
        "autograd::grad does not accumulate into .grad"
    );
    let unrelated = Tensor::ones([2]).requires_grad_(true);
    assert!(kiln::autograd::grad(&y, &[&unrelated], None).unwrap()[0].is_none());
    let frozen = Tensor::ones([2]);
    assert!(kiln::autograd::grad(&y, &[&frozen], None).is_err());
}

#[test]
fn realising_inside_a_trace_is_a_clear_error() {
    let x = Tensor::zeros([2]);
    let err = match kiln::compile::compile(&[&x], |ins| {
        let v = ins[0].add(1.0).try_to_vec::<f32>()?;
        Ok(vec![Tensor::from_vec(v, [2])])
    }) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("realising a placeholder must fail"),
    };
    assert!(err.contains("compiled step"), "{err}");
}

#[test]
fn run_checks_input_types() {
    let x = Tensor::zeros([2, 3]);
    let step = kiln::compile::compile(&[&x], |ins| Ok(vec![ins[0].sum_all()])).unwrap();
    assert_eq!(step.run(&[&Tensor::ones([2, 3])]).unwrap()[0].item(), 6.0);
    let err = step.run(&[&Tensor::ones([3, 2])]).unwrap_err().to_string();
    assert!(err.contains("traced as f32[2,3]"), "{err}");
}
