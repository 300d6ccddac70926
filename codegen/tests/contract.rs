//! The contraction kernels against the reference interpreter (`kiln_ir::interp`) on random
//! shapes: sizes of 1, odd sizes, strides 1-3, padding, dilation 2, groups 1-3,
//! output_padding, 1-, 2- and 3-D, batches, every epilogue, one and two threads, and tiles
//! small enough that outputs span many tiles with a partial last one.

use kiln_codegen::contract::{
    conv, conv_transpose, conv_weight, matmul, Config, ContractError, Contraction, ConvGeometry,
    Epilogue, Float, MatMulShape,
};
use kiln_ir::{interp, ConvParams, DType, Data, Graph, Literal, Op, TensorType};
use std::collections::HashMap;

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.unit()).collect()
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// The element types under test, with their conversions and tolerances.
trait Elem: Float {
    const DTYPE: DType;
    /// Relative tolerance, of the largest magnitude of the expected result.
    const TOL: f64;
    fn of(v: f64) -> Self;
    fn to(self) -> f64;
    fn data(v: Vec<Self>) -> Data;
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    const TOL: f64 = 1e-4;
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn to(self) -> f64 {
        f64::from(self)
    }
    fn data(v: Vec<f32>) -> Data {
        Data::F32(v)
    }
}

impl Elem for f64 {
    const DTYPE: DType = DType::F64;
    const TOL: f64 = 1e-11;
    fn of(v: f64) -> f64 {
        v
    }
    fn to(self) -> f64 {
        self
    }
    fn data(v: Vec<f64>) -> Data {
        Data::F64(v)
    }
}

fn cast<T: Elem>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::of(x)).collect()
}

/// The interpreter's value of a one-node graph `op(a, b)`; also checks that
/// [`Contraction`] gives the result the same shape and channel count as the interpreter.
fn reference<T: Elem>(op: Op, a: (&[usize], &[T]), b: (&[usize], &[T])) -> Vec<f64> {
    let mut g = Graph::new();
    let ta = TensorType::new(T::DTYPE, a.0.to_vec());
    let tb = TensorType::new(T::DTYPE, b.0.to_vec());
    let (ia, ib) = (g.input("a", ta).unwrap(), g.input("b", tb).unwrap());
    let id = g.push(op.clone(), &[ia, ib]).unwrap();
    let la = Literal::new(a.0.to_vec(), T::data(a.1.to_vec())).unwrap();
    let lb = Literal::new(b.0.to_vec(), T::data(b.1.to_vec())).unwrap();
    let binds: HashMap<_, _> = [(ia, &la), (ib, &lb)].into_iter().collect();
    let out = interp::eval(&g, &binds, &[id]).unwrap().remove(0);
    let c = Contraction::new(&op, a.0, b.0).unwrap();
    assert_eq!(c.out_shape(), &out.shape[..], "{op:?}");
    let channels = match op {
        Op::MatMul => *out.shape.last().unwrap(),
        Op::ConvWeight { .. } => out.shape[0],
        _ => out.shape[1],
    };
    assert_eq!(c.channels(), channels);
    out.to_f64_vec()
}

/// Which epilogue a case uses; the expected result applies the same steps to the reference.
#[derive(Clone, Copy, Debug)]
enum Epi {
    None,
    Accumulate,
    Bias,
    BiasAccumulate,
    Map,
    BiasMap,
}

const EPIS: [Epi; 6] = [
    Epi::None,
    Epi::Accumulate,
    Epi::Bias,
    Epi::BiasAccumulate,
    Epi::Map,
    Epi::BiasMap,
];

/// The map used in tests: depends on the element's flat offset, so a run reported at the
/// wrong offset, or an element mapped twice or never, changes the result.
fn map_value(v: f64, flat: usize) -> f64 {
    v * 0.5 + (flat % 7) as f64 * 0.25
}

fn map_fn<T: Elem>(offset: usize, run: &mut [T]) {
    for (j, v) in run.iter_mut().enumerate() {
        *v = T::of(map_value(v.to(), offset + j));
    }
}

/// Runs `kernel` with epilogue `epi` on an output initialised to `init` and checks it
/// against `reference` passed through the same epilogue (`channel(i)`: bias index of element
/// `i`).
fn check_epilogue<T: Elem>(
    what: &str,
    epi: Epi,
    reference: &[f64],
    init: &[f64],
    bias: &[f64],
    channel: impl Fn(usize) -> usize,
    kernel: impl FnOnce(&mut [T], &Epilogue<T>) -> Result<(), ContractError>,
) {
    let bias_t: Vec<T> = cast(bias);
    let (acc, with_bias, with_map) = match epi {
        Epi::None => (false, false, false),
        Epi::Accumulate => (true, false, false),
        Epi::Bias => (false, true, false),
        Epi::BiasAccumulate => (true, true, false),
        Epi::Map => (false, false, true),
        Epi::BiasMap => (false, true, true),
    };
    let map: &(dyn Fn(usize, &mut [T]) + Sync) = &map_fn::<T>;
    let e = Epilogue {
        accumulate: acc,
        bias: with_bias.then_some(&bias_t[..]),
        map: with_map.then_some(map),
    };
    let mut out: Vec<T> = cast(init);
    kernel(&mut out, &e).unwrap_or_else(|err| panic!("{what}: {err}"));
    let want: Vec<f64> = reference
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            // the reference is rounded to T once, as the interpreter's result is
            let mut v = r;
            if acc {
                v += T::of(init[i]).to();
            }
            if with_bias {
                v += T::of(bias[channel(i)]).to();
            }
            if with_map {
                v = map_value(v, i);
            }
            v
        })
        .collect();
    assert_close(what, &out, &want, T::TOL);
}

fn assert_close<T: Elem>(what: &str, got: &[T], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g.to() - w).abs();
        assert!(
            err <= tol * scale,
            "{what}: element {i}: got {}, want {w} (error {err:e}, scale {scale:e})",
            g.to()
        );
    }
}

/// A random `Config`: one or two threads, often tiles far smaller than the default, and
/// sometimes tile plans made per item instead of shared.
fn random_config(rng: &mut Rng) -> Config {
    Config {
        threads: rng.range(1, 2),
        tile_elems: if rng.coin() {
            rng.range(1, 400)
        } else {
            Config::default().tile_elems
        },
        shared_plan_moves: if rng.range(0, 3) == 0 {
            0
        } else {
            Config::default().shared_plan_moves
        },
    }
}

/// A random convolution: `x [N, Cx, i...]`, `w [Cy, Cx/G, k...]`, parameters.
struct ConvCase {
    x: Vec<usize>,
    w: Vec<usize>,
    p: ConvParams,
}

fn random_conv(rng: &mut Rng, nd: usize) -> ConvCase {
    let groups = rng.range(1, 3);
    let (cxg, cyg) = (rng.range(1, 3), rng.range(1, 3));
    let batch = rng.range(1, 3);
    let mut p = ConvParams::new(nd);
    p.groups = groups;
    let mut x = vec![batch, groups * cxg];
    let mut w = vec![groups * cyg, cxg];
    let extra = [0, 9, 5, 3][nd];
    for j in 0..nd {
        let k = rng.range(1, 3);
        p.stride[j] = rng.range(1, 3);
        p.dilation[j] = rng.range(1, 2);
        p.padding[j] = rng.range(0, 2);
        let span = p.dilation[j] * (k - 1) + 1;
        let min = span.saturating_sub(2 * p.padding[j]).max(1);
        x.push(rng.range(min, span + extra));
        w.push(k);
    }
    ConvCase { x, w, p }
}

fn channel_axis(shape: &[usize], axis: usize) -> impl Fn(usize) -> usize {
    let inner: usize = shape[axis + 1..].iter().product();
    let size = shape[axis];
    move |i| (i / inner) % size
}

/// All three convolution kernels on one random case, against the interpreter.
fn check_conv_case<T: Elem>(rng: &mut Rng, case: &ConvCase, tag: &str) {
    let ConvCase { x: xs, w: ws, p } = case;
    let nd = p.spatial_dims();
    let x: Vec<f64> = rng.vec(xs.iter().product());
    let w: Vec<f64> = rng.vec(ws.iter().product());
    let (xt, wt): (Vec<T>, Vec<T>) = (cast(&x), cast(&w));

    // conv
    let g = ConvGeometry::conv(xs, ws, p).unwrap();
    let ys = g.y_shape();
    let want = reference(Op::Conv(p.clone()), (xs, &xt), (ws, &wt));
    let epi = EPIS[rng.range(0, 5)];
    let cfg = random_config(rng);
    let what = format!("{tag} conv x{xs:?} w{ws:?} {p:?} {epi:?} {cfg:?}");
    let init = rng.vec(want.len());
    let bias = rng.vec(ys[1]);
    check_epilogue(
        &what,
        epi,
        &want,
        &init,
        &bias,
        channel_axis(&ys, 1),
        |y, e| conv(&g, &xt, &wt, y, e, &cfg),
    );

    // conv_weight(x, dy)
    let dy: Vec<f64> = rng.vec(ys.iter().product());
    let dyt: Vec<T> = cast(&dy);
    let kernel = ws[2..].to_vec();
    let gw = ConvGeometry::conv_weight(xs, &ys, p, &kernel).unwrap();
    let want = reference(
        Op::ConvWeight {
            params: p.clone(),
            kernel: kernel.clone(),
        },
        (xs, &xt),
        (&ys, &dyt),
    );
    let epi = EPIS[rng.range(0, 5)];
    let cfg = random_config(rng);
    let what = format!("{tag} conv_weight x{xs:?} dy{ys:?} k{kernel:?} {p:?} {epi:?} {cfg:?}");
    let init = rng.vec(want.len());
    let bias = rng.vec(ws[0]);
    check_epilogue(
        &what,
        epi,
        &want,
        &init,
        &bias,
        channel_axis(ws, 0),
        |dw, e| conv_weight(&gw, &xt, &dyt, dw, e, &cfg),
    );

    // conv_transpose(dy, w), with a random output_padding
    let mut pt = p.clone();
    for j in 0..nd {
        pt.output_padding[j] = rng.range(0, p.stride[j].max(p.dilation[j]) - 1);
    }
    let Ok(gt) = ConvGeometry::conv_transpose(&ys, ws, &pt) else {
        // padding larger than the transposed output: the IR rejects it too
        assert!(kiln_ir::infer::infer(
            &Op::ConvTranspose(pt.clone()),
            &[
                &TensorType::new(T::DTYPE, ys.clone()),
                &TensorType::new(T::DTYPE, ws.clone())
            ]
        )
        .is_err());
        return;
    };
    let xts = gt.x_shape();
    let want = reference(Op::ConvTranspose(pt.clone()), (&ys, &dyt), (ws, &wt));
    let epi = EPIS[rng.range(0, 5)];
    let cfg = random_config(rng);
    let what = format!("{tag} conv_transpose dy{ys:?} w{ws:?} {pt:?} {epi:?} {cfg:?}");
    let init = rng.vec(want.len());
    let bias = rng.vec(xts[1]);
    let via_contraction = rng.coin();
    check_epilogue(
        &what,
        epi,
        &want,
        &init,
        &bias,
        channel_axis(&xts, 1),
        |dx, e| {
            if via_contraction {
                let c = Contraction::new(&Op::ConvTranspose(pt.clone()), &ys, ws).unwrap();
                c.run(&dyt, &wt, dx, e, &cfg)
            } else {
                conv_transpose(&gt, &dyt, &wt, dx, e, &cfg)
            }
        },
    );
}

#[test]
fn conv_family_matches_interpreter_f32() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..1500 {
        let nd = 1 + i % 3;
        let case = random_conv(&mut rng, nd);
        check_conv_case::<f32>(&mut rng, &case, &format!("case {i}"));
    }
}

#[test]
fn conv_family_matches_interpreter_f64() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for i in 0..450 {
        let nd = 1 + i % 3;
        let case = random_conv(&mut rng, nd);
        check_conv_case::<f64>(&mut rng, &case, &format!("case {i}"));
    }
}

/// Larger cases: many tiles per image, channel blocks split across threads, and 1x1 kernels.
fn p3_pad1() -> ConvParams {
    let mut p = ConvParams::new(3);
    p.padding = vec![1; 3];
    p
}

#[test]
fn conv_family_larger_cases() {
    let mut rng = Rng(42);
    let mut p3 = ConvParams::new(3);
    p3.padding = vec![1; 3];
    let mut p2 = ConvParams::new(2);
    p2.stride = vec![2, 1];
    p2.padding = vec![1, 0];
    p2.dilation = vec![1, 2];
    p2.groups = 2;
    let cases = [
        // a small 3-D U-Net layer
        ConvCase {
            x: vec![1, 8, 10, 9, 11],
            w: vec![6, 8, 3, 3, 3],
            p: p3,
        },
        // LeNet-like, batch 4
        ConvCase {
            x: vec![4, 1, 20, 20],
            w: vec![6, 1, 5, 5],
            p: ConvParams::new(2),
        },
        ConvCase {
            x: vec![2, 6, 17, 23],
            w: vec![4, 3, 3, 3],
            p: p2,
        },
        // pointwise
        ConvCase {
            x: vec![2, 5, 7, 9],
            w: vec![3, 5, 1, 1],
            p: ConvParams::new(2),
        },
        // Enough positions (and, for the weight gradient, output channels) for the wide
        // AVX-512 kernel (`contract::wide`), with ragged tiles and row blocks: 66 output
        // channels (11 blocks of 6), 630 positions (tiles of 256 + a 118-wide tail).
        ConvCase {
            x: vec![2, 5, 9, 10, 7],
            w: vec![66, 5, 3, 3, 3],
            p: p3_pad1(),
        },
        // Two groups of 65 output channels, dilation 2 with padding 2 (the transposed
        // convolution then runs as a forward one with padding 2).
        ConvCase {
            x: vec![1, 4, 17, 19],
            w: vec![130, 2, 3, 3],
            p: ConvParams {
                padding: vec![2, 2],
                dilation: vec![2, 2],
                groups: 2,
                ..ConvParams::new(2)
            },
        },
        // Pointwise with many positions.
        ConvCase {
            x: vec![2, 7, 20, 21],
            w: vec![64, 7, 1, 1],
            p: ConvParams::new(2),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        for rep in 0..3 {
            check_conv_case::<f32>(&mut rng, case, &format!("large case {i}.{rep}"));
        }
    }
}

#[test]
fn matmul_matches_interpreter() {
    let mut rng = Rng(7);
    for i in 0..150 {
        let rank = rng.range(2, 4);
        let mut a: Vec<usize> = (0..rank - 2).map(|_| rng.range(1, 3)).collect();
        let mut b = a.clone();
        let big = i % 10 == 0;
        let dim = |rng: &mut Rng| {
            if big {
                rng.range(60, 140)
            } else {
                rng.range(1, 24)
            }
        };
        let (m, k, n) = (dim(&mut rng), dim(&mut rng), dim(&mut rng));
        a.extend([m, k]);
        b.extend([k, n]);
        let shape = MatMulShape::new(&a, &b).unwrap();
        let av = rng.vec(a.iter().product());
        let bv = rng.vec(b.iter().product());
        let epi = EPIS[rng.range(0, 5)];
        let cfg = random_config(&mut rng);
        let what = format!("matmul {a:?} x {b:?} {epi:?} {cfg:?}");
        if i % 4 == 3 {
            let (at, bt): (Vec<f64>, Vec<f64>) = (cast(&av), cast(&bv));
            let want = reference(Op::MatMul, (&a, &at), (&b, &bt));
            let init = rng.vec(want.len());
            let bias = rng.vec(n);
            check_epilogue(
                &what,
                epi,
                &want,
                &init,
                &bias,
                |i| i % n,
                |c, e| matmul(&shape, &at, &bt, c, e, &cfg),
            );
        } else {
            let (at, bt): (Vec<f32>, Vec<f32>) = (cast(&av), cast(&bv));
            let want = reference(Op::MatMul, (&a, &at), (&b, &bt));
            let init = rng.vec(want.len());
            let bias = rng.vec(n);
            check_epilogue(
                &what,
                epi,
                &want,
                &init,
                &bias,
                |i| i % n,
                |c, e| matmul(&shape, &at, &bt, c, e, &cfg),
            );
        }
    }
}

/// Empty contractions (`k = 0`, no input channels, an input that is all padding) give zeros
/// (or leave the output when accumulating); empty results are fine.
#[test]
fn empty_sizes() {
    let cfg = Config::default();
    let shape = MatMulShape::new(&[2, 3, 0], &[2, 0, 4]).unwrap();
    let mut c = vec![1.0f32; 24];
    matmul(&shape, &[], &[], &mut c, &Epilogue::none(), &cfg).unwrap();
    assert!(c.iter().all(|&v| v == 0.0));
    let shape = MatMulShape::new(&[0, 3], &[3, 4]).unwrap();
    matmul::<f32>(&shape, &[], &[0.0; 12], &mut [], &Epilogue::none(), &cfg).unwrap();

    // no input channels: conv gives the bias
    let g = ConvGeometry::conv(&[1, 0, 5], &[2, 0, 3], &ConvParams::new(1)).unwrap();
    let mut y = vec![9.0f32; 6];
    conv(&g, &[], &[], &mut y, &Epilogue::bias(&[1.0, 2.0]), &cfg).unwrap();
    assert_eq!(y, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);

    // an empty input with padding: every tap reads padding
    let mut p = ConvParams::new(1);
    p.padding = vec![1];
    let g = ConvGeometry::conv(&[1, 1, 0], &[1, 1, 1], &p).unwrap();
    let mut y = vec![9.0f32; 2];
    conv(&g, &[], &[3.0], &mut y, &Epilogue::none(), &cfg).unwrap();
    assert_eq!(y, [0.0, 0.0]);
    let mut dw = vec![5.0f32];
    conv_weight(&g, &[], &[1.0, 1.0], &mut dw, &Epilogue::accumulate(), &cfg).unwrap();
    assert_eq!(dw, [5.0]);
    conv_weight(&g, &[], &[1.0, 1.0], &mut dw, &Epilogue::none(), &cfg).unwrap();
    assert_eq!(dw, [0.0]);

    // batch 0
    let g = ConvGeometry::conv(&[0, 2, 5], &[3, 2, 2], &ConvParams::new(1)).unwrap();
    let mut dw = vec![5.0f32; 12];
    conv_weight(&g, &[], &[], &mut dw, &Epilogue::none(), &cfg).unwrap();
    assert!(dw.iter().all(|&v| v == 0.0));
}

#[test]
fn mismatches_are_errors() {
    let cfg = Config::default();
    let shape = MatMulShape::new(&[2, 3], &[3, 4]).unwrap();
    let a = vec![0.0f32; 6];
    let b = vec![0.0f32; 12];
    let mut c = vec![0.0f32; 8];
    assert!(matches!(
        matmul(&shape, &a[..5], &b, &mut c, &Epilogue::none(), &cfg),
        Err(ContractError::Length {
            what: "matmul lhs",
            want: 6,
            got: 5
        })
    ));
    assert!(matches!(
        matmul(&shape, &a, &b, &mut c, &Epilogue::bias(&[1.0; 3]), &cfg),
        Err(ContractError::Length { what: "bias", .. })
    ));
    assert!(matches!(
        MatMulShape::new(&[2, 3], &[4, 4]),
        Err(ContractError::Shape(_))
    ));
    assert!(matches!(
        Contraction::new(&Op::Detach, &[2, 3], &[2, 3]),
        Err(ContractError::Shape(_))
    ));
    let p = ConvParams::new(2);
    assert!(matches!(
        ConvGeometry::conv(&[1, 2, 5, 5], &[3, 3, 3, 3], &p),
        Err(ContractError::Shape(_))
    ));
    let g = ConvGeometry::conv(&[1, 2, 5, 5], &[3, 2, 3, 3], &p).unwrap();
    let x = vec![0.0f32; 50];
    let w = vec![0.0f32; 54];
    let mut y = vec![0.0f32; 27];
    assert!(conv(&g, &x, &w, &mut y[..26], &Epilogue::none(), &cfg).is_err());
    assert!(conv_transpose(&g, &y, &w, &mut [0.0; 49], &Epilogue::none(), &cfg).is_err());
    assert!(conv_weight(&g, &x, &y, &mut [0.0; 53], &Epilogue::none(), &cfg).is_err());
    conv(&g, &x, &w, &mut y, &Epilogue::none(), &cfg).unwrap();
}
