//! Dumps the IR of a small training step: the forward graph that realising the loss runs, the
//! forward+backward graph that `loss.backward()` runs, its text form parsed back, and a DOT file.
//!
//! Run: `cargo run --release --example ir_dump [OUT_DIR]` (default `target/ir_dump`), then
//! e.g. `dot -Tsvg target/ir_dump/backward.dot > backward.svg`.

use kiln::functional::{self as F, Reduction};
use kiln::{DType, Generator, Tensor};

fn main() -> kiln::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/ir_dump".into());
    std::fs::create_dir_all(&out).map_err(|e| kiln::Error::Data {
        path: out.clone(),
        msg: e.to_string(),
    })?;
    let mut g = Generator::new(1);

    // A one-hidden-layer classifier on a batch of 4.
    let x = Tensor::randn_with([4, 8], DType::F32, &mut g);
    let y = Tensor::from_vec(vec![0i64, 2, 1, 2], [4]);
    let w1 = Tensor::randn_with([16, 8], DType::F32, &mut g)
        .mul(0.3)
        .detach()
        .requires_grad_(true);
    let w2 = Tensor::randn_with([3, 16], DType::F32, &mut g)
        .mul(0.3)
        .detach()
        .requires_grad_(true);
    w1.set_name("fc1.weight");
    w2.set_name("fc2.weight");
    let h = F::linear(&x, &w1, None).relu();
    let logits = F::linear(&h, &w2, None);
    let loss = F::cross_entropy(&logits, &y, None, -100, Reduction::Mean);

    let forward = kiln::trace(&[&loss])?;
    println!("== forward ({} nodes) ==\n{forward}", forward.len());

    let backward = kiln::autograd::backward_graph(&loss)?;
    println!(
        "== forward + backward ({} nodes) ==\n{backward}",
        backward.len()
    );

    // The text form round-trips: parse what was printed and compare.
    let text = kiln::ir::text::print(&backward);
    let parsed = kiln::ir::text::parse(&text)?;
    println!(
        "text form parses back to an equal graph: {}",
        kiln::ir::text::structurally_equal(&backward, &parsed)
    );

    for (name, graph) in [("forward", &forward), ("backward", &backward)] {
        let kir = format!("{out}/{name}.kir");
        let dot = format!("{out}/{name}.dot");
        std::fs::write(&kir, kiln::ir::text::print(graph)).map_err(|e| kiln::Error::Data {
            path: kir.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(&dot, kiln::ir::dot::to_dot(graph)).map_err(|e| kiln::Error::Data {
            path: dot.clone(),
            msg: e.to_string(),
        })?;
        println!("wrote {kir} and {dot}");
    }
    loss.backward();
    println!(
        "loss = {:.6}; |grad fc1.weight| = {:.6}",
        loss.item(),
        w1.grad().unwrap().square().sum_all().sqrt().item()
    );
    Ok(())
}
