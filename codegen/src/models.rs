//! Fixed reference graphs built with the IR's builders: the golden tests' models and the
//! benchmark's workload (an MLP training step, a conv+relu+pool block, LeNet-5 forward and
//! backward). They compose relu, pooling and the MSE loss the way the front end does
//! (`where(x > 0, x, 0)`, strided slices and a `where` chain, `mean((y - t)^2)`).

use kiln_ir::{
    autodiff, CmpOp, ConvParams, DType, Data, Graph, Literal, NodeId, ReduceOp, Result, SliceAxis,
    TensorType,
};

/// A graph, its inputs (to bind) and the nodes to compute.
pub struct Model {
    pub graph: Graph,
    pub inputs: Vec<NodeId>,
    pub wanted: Vec<NodeId>,
}

impl Model {
    /// Deterministic pseudo-random values for every input, in `[-scale, scale)`.
    pub fn random_inputs(&self, seed: u64, scale: f64) -> Vec<Literal> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (r >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0
        };
        self.inputs
            .iter()
            .map(|&i| {
                let ty = self.graph.ty(i);
                let v: Vec<f64> = (0..ty.numel()).map(|_| next() * scale).collect();
                Literal::new(ty.shape.clone(), Data::F64(v))
                    .map(|l| Literal {
                        data: l.data.cast(ty.dtype),
                        ..l
                    })
                    .expect("length matches")
            })
            .collect()
    }
}

fn f32t(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

/// `where(x > 0, x, 0)`.
pub fn relu(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let z = g.full_like(0.0, x)?;
    let c = g.compare(CmpOp::Gt, x, z)?;
    g.select(c, x, z)
}

/// `x + bias` with `bias [C]` broadcast along axis 1 (or the last axis for rank 2).
pub fn add_bias(g: &mut Graph, x: NodeId, bias: NodeId) -> Result<NodeId> {
    let shape = g.shape(x).to_vec();
    let c = g.shape(bias)[0];
    let mut bshape = vec![1; shape.len()];
    let axis = if shape.len() == 2 {
        1
    } else {
        1.min(shape.len() - 1)
    };
    bshape[axis] = c;
    let b = g.reshape(bias, bshape)?;
    let b = g.expand(b, shape)?;
    g.add(x, b)
}

/// 2-d max pooling with a `k x k` window and stride `k`: the first maximum wins.
pub fn max_pool2d(g: &mut Graph, x: NodeId, k: usize) -> Result<NodeId> {
    let s = g.shape(x).to_vec();
    let (oh, ow) = (s[2] / k, s[3] / k);
    let mut m: Option<NodeId> = None;
    for dy in 0..k {
        for dx in 0..k {
            let axes = vec![
                SliceAxis::full(s[0]),
                SliceAxis::full(s[1]),
                SliceAxis {
                    start: dy,
                    end: dy + (oh - 1) * k + 1,
                    step: k,
                },
                SliceAxis {
                    start: dx,
                    end: dx + (ow - 1) * k + 1,
                    step: k,
                },
            ];
            let w = g.slice(x, axes)?;
            m = Some(match m {
                None => w,
                Some(m) => {
                    let c = g.compare(CmpOp::Gt, w, m)?;
                    g.select(c, w, m)?
                }
            });
        }
    }
    Ok(m.expect("k >= 1"))
}

/// `mean((y - t)^2)` as a scalar of shape `[]`.
pub fn mse(g: &mut Graph, y: NodeId, t: NodeId) -> Result<NodeId> {
    let d = g.sub(y, t)?;
    let sq = g.mul(d, d)?;
    let rank = g.shape(sq).len();
    let n = g.ty(sq).numel() as f64;
    let s = g.reduce(ReduceOp::Sum, sq, (0..rank).collect())?;
    let s = g.reshape(s, vec![])?;
    g.scale(s, 1.0 / n)
}

/// Adds the backward graph of `loss` (seed 1) with respect to `params`; returns the
/// gradients.
fn backward(g: &mut Graph, loss: NodeId, params: &[NodeId]) -> Result<Vec<NodeId>> {
    let seed = g.full_like(1.0, loss)?;
    let grads = autodiff::grad(g, &[(loss, seed)], params)?;
    Ok(grads
        .into_iter()
        .zip(params)
        .map(|(gr, &p)| gr.unwrap_or(p))
        .collect())
}

/// A two-layer perceptron's training step: loss and the gradients of its four parameters.
pub fn mlp_step(batch: usize, inputs: usize, hidden: usize, outputs: usize) -> Result<Model> {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[batch, inputs]))?;
    let t = g.input("t", f32t(&[batch, outputs]))?;
    let w1 = g.param("w1", f32t(&[inputs, hidden]))?;
    let b1 = g.param("b1", f32t(&[hidden]))?;
    let w2 = g.param("w2", f32t(&[hidden, outputs]))?;
    let b2 = g.param("b2", f32t(&[outputs]))?;
    let h = g.matmul(x, w1)?;
    let h = add_bias(&mut g, h, b1)?;
    let h = relu(&mut g, h)?;
    let y = g.matmul(h, w2)?;
    let y = add_bias(&mut g, y, b2)?;
    let loss = mse(&mut g, y, t)?;
    let params = [w1, b1, w2, b2];
    let grads = backward(&mut g, loss, &params)?;
    let mut wanted = vec![loss];
    wanted.extend(grads);
    Ok(Model {
        graph: g,
        inputs: vec![x, t, w1, b1, w2, b2],
        wanted,
    })
}

/// Forward only: `maxpool2(relu(conv3x3(x, w, padding 1) + b))`.
pub fn conv_block(batch: usize, cin: usize, cout: usize, size: usize) -> Result<Model> {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[batch, cin, size, size]))?;
    let w = g.param("w", f32t(&[cout, cin, 3, 3]))?;
    let b = g.param("b", f32t(&[cout]))?;
    let mut p = ConvParams::new(2);
    p.padding = vec![1, 1];
    let y = g.conv(x, w, p)?;
    let y = add_bias(&mut g, y, b)?;
    let y = relu(&mut g, y)?;
    let y = max_pool2d(&mut g, y, 2)?;
    Ok(Model {
        graph: g,
        inputs: vec![x, w, b],
        wanted: vec![y],
    })
}

/// LeNet-5 on 28x28 images (conv5x5 pad 2, pool, conv5x5, pool, three linear layers, relu),
/// MSE against `t`: the loss and the gradients of all ten parameters.
pub fn lenet_step(batch: usize) -> Result<Model> {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[batch, 1, 28, 28]))?;
    let t = g.input("t", f32t(&[batch, 10]))?;
    let c1w = g.param("conv1.weight", f32t(&[6, 1, 5, 5]))?;
    let c1b = g.param("conv1.bias", f32t(&[6]))?;
    let c2w = g.param("conv2.weight", f32t(&[16, 6, 5, 5]))?;
    let c2b = g.param("conv2.bias", f32t(&[16]))?;
    let f1w = g.param("fc1.weight", f32t(&[400, 120]))?;
    let f1b = g.param("fc1.bias", f32t(&[120]))?;
    let f2w = g.param("fc2.weight", f32t(&[120, 84]))?;
    let f2b = g.param("fc2.bias", f32t(&[84]))?;
    let f3w = g.param("fc3.weight", f32t(&[84, 10]))?;
    let f3b = g.param("fc3.bias", f32t(&[10]))?;
    let mut p1 = ConvParams::new(2);
    p1.padding = vec![2, 2];
    let h = g.conv(x, c1w, p1)?;
    let h = add_bias(&mut g, h, c1b)?;
    let h = relu(&mut g, h)?;
    let h = max_pool2d(&mut g, h, 2)?; // [N, 6, 14, 14]
    let h = g.conv(h, c2w, ConvParams::new(2))?;
    let h = add_bias(&mut g, h, c2b)?;
    let h = relu(&mut g, h)?;
    let h = max_pool2d(&mut g, h, 2)?; // [N, 16, 5, 5]
    let h = g.reshape(h, vec![batch, 400])?;
    let h = g.matmul(h, f1w)?;
    let h = add_bias(&mut g, h, f1b)?;
    let h = relu(&mut g, h)?;
    let h = g.matmul(h, f2w)?;
    let h = add_bias(&mut g, h, f2b)?;
    let h = relu(&mut g, h)?;
    let y = g.matmul(h, f3w)?;
    let y = add_bias(&mut g, y, f3b)?;
    let loss = mse(&mut g, y, t)?;
    let params = [c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b, f3w, f3b];
    let grads = backward(&mut g, loss, &params)?;
    let mut wanted = vec![loss];
    wanted.extend(grads);
    let mut inputs = vec![x, t];
    inputs.extend(params);
    Ok(Model {
        graph: g,
        inputs,
        wanted,
    })
}
