//! The user API against what a PyTorch user takes for granted.
//!
//! Every expected value is derived by hand (the arithmetic is in the comments) or from PyTorch's
//! documented semantics; none is computed by kiln. Errors are checked for the op, the shapes and
//! the caller's line (`line!()` on the line of the call).

use kiln::functional::{self as F, ConvOpts, PoolOpts, Reduction};
use kiln::ir::{text, Op};
use kiln::nn::Module;
use kiln::optim::Sgd;
use kiln::{cat, no_grad, stack, try_cat, where_, DType, Device, Error, Generator, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

// ----- helpers --------------------------------------------------------------------------------

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "length differs: got {got:?}, want {want:?}"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}\n got  {got:?}\n want {want:?}"
        );
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>()
}

fn grad_of(t: &Tensor) -> Vec<f32> {
    f32s(&t.grad().expect("the tensor has a gradient"))
}

/// The message of the panic `f` raises.
fn panic_message<R>(f: impl FnOnce() -> R) -> String {
    let payload = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(p) => p,
    };
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<a panic without a message>".into()
    }
}

/// `tests/api.rs:LINE:` (the column follows).
fn at(line: u32) -> String {
    format!("{}:{line}:", file!())
}

/// Checks a shape error: the op first, every shape, and this file's `line`.
#[track_caller]
fn check_shape_error(msg: &str, op: &str, shapes: &[&str], line: u32) {
    assert!(
        msg.starts_with(&format!("{op}:")),
        "message should start with `{op}:`: {msg}"
    );
    for s in shapes {
        assert!(msg.contains(s), "message should name shape {s}: {msg}");
    }
    assert!(
        msg.contains(&at(line)),
        "message should name the caller's line {}: {msg}",
        at(line)
    );
}

/// Runs `f` on another thread; fails (instead of hanging the suite) if it does not finish.
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("did not finish: a deadlock (or a panic on the worker thread)")
}

// ----- shape errors ---------------------------------------------------------------------------

#[test]
fn broadcast_error_names_op_shapes_and_line_in_both_forms() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4]);
    let line = line!() + 1;
    let e = a.try_add(&b).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    check_shape_error(&e.to_string(), "add", &["[2,3]", "[4]"], line);

    let line = line!() + 1;
    let msg = panic_message(|| a.add(&b));
    check_shape_error(&msg, "add", &["[2,3]", "[4]"], line);
    let line = line!() + 1;
    let msg = panic_message(|| &a * &b);
    check_shape_error(&msg, "mul", &["[2,3]", "[4]"], line);
    let line = line!() + 1;
    let msg = panic_message(|| a.gt(&b));
    check_shape_error(&msg, "gt", &["[2,3]", "[4]"], line);
}

#[test]
fn panicking_form_has_the_same_message_as_the_try_form() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4, 5]);
    let line = line!() + 1;
    let e = a.try_matmul(&b).unwrap_err().to_string();
    let panic_line = line!() + 1;
    let p = panic_message(|| a.matmul(&b));
    assert!(e.contains(&at(line)), "{e}");
    assert!(p.contains(&at(panic_line)), "{p}");
    // The same message but for the location.
    let strip = |s: &str| s.split(" (at ").next().unwrap().to_string();
    assert_eq!(strip(&e), strip(&p));
}

#[test]
fn shape_errors_of_many_ops_name_op_shapes_and_line() {
    let a = Tensor::zeros([2, 3]);

    let line = line!() + 1;
    let e = a.try_matmul(&Tensor::zeros([4, 5])).unwrap_err();
    check_shape_error(&e.to_string(), "matmul", &["[2,3]", "[4,5]"], line);

    let line = line!() + 1;
    let e = a.try_reshape(&[4]).unwrap_err();
    check_shape_error(&e.to_string(), "reshape", &["[2,3]", "[4]"], line);

    let line = line!() + 1;
    let e = a.try_reshape(&[-1, 4]).unwrap_err();
    check_shape_error(&e.to_string(), "reshape", &["[2,3]"], line);

    let b = Tensor::zeros([2, 4]);
    let line = line!() + 1;
    let e = try_cat(&[&a, &b], 0).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("cat"), "{msg}");
    assert!(
        msg.contains("[2,3]") && msg.contains("[2,4]") && msg.contains(&at(line)),
        "{msg}"
    );

    let line = line!() + 1;
    let e = a.try_broadcast_to(&[3, 3]).unwrap_err();
    check_shape_error(&e.to_string(), "expand", &["[2,3]", "[3,3]"], line);

    let line = line!() + 1;
    let e = a.try_permute(&[0]).unwrap_err();
    check_shape_error(&e.to_string(), "permute", &["[0]"], line);

    let line = line!() + 1;
    let e = a.try_narrow(1, 2, 5).unwrap_err();
    check_shape_error(&e.to_string(), "narrow", &[], line);

    let line = line!() + 1;
    let e = a.try_narrow(5, 0, 1).unwrap_err();
    check_shape_error(&e.to_string(), "narrow", &[], line);

    let line = line!() + 1;
    let e = a.try_slice(2, 0, 1, 1).unwrap_err();
    check_shape_error(&e.to_string(), "slice", &[], line);

    let line = line!() + 1;
    let e = a.try_pad(&[1, 1, 1], 0.0).unwrap_err();
    check_shape_error(&e.to_string(), "pad", &[], line);

    let line = line!() + 1;
    let e = Tensor::try_from_vec(vec![1.0f32; 5], [2, 3]).unwrap_err();
    check_shape_error(&e.to_string(), "from_vec", &[], line);

    let line = line!() + 1;
    let msg = panic_message(|| a.sum(&[2], false));
    check_shape_error(&msg, "sum", &[], line);

    let line = line!() + 1;
    let e = a.try_item().unwrap_err();
    check_shape_error(&e.to_string(), "item", &["[2, 3]"], line);

    // A convolution with the wrong number of input channels names both operand shapes.
    let x = Tensor::zeros([1, 2, 4, 4]);
    let w = Tensor::zeros([1, 3, 2, 2]);
    let opts = ConvOpts::default();
    let line = line!() + 1;
    let e = F::try_conv(&x, &w, None, &opts).unwrap_err();
    check_shape_error(&e.to_string(), "conv", &["[1,2,4,4]", "[1,3,2,2]"], line);
}

#[test]
fn in_place_shape_error_names_the_callers_line() {
    let mut a = Tensor::zeros([3]);
    let line = line!() + 1;
    let e = a.add_(&Tensor::zeros([2, 3])).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&at(line)), "{msg}");
    let line = line!() + 1;
    let e = a.add_(&Tensor::zeros([4])).unwrap_err();
    check_shape_error(&e.to_string(), "add", &["[3]", "[4]"], line);
}

#[test]
fn expand_rejects_minus_one_in_a_new_leading_axis() {
    // PyTorch: "The expanded size of the tensor (-1) isn't allowed in a leading, non-existing
    // dimension 0".
    let x = Tensor::zeros([3, 1]);
    let line = line!() + 1;
    let msg = panic_message(|| x.expand(&[-1, 3, 4]));
    check_shape_error(&msg, "expand", &[], line);
}

// ----- broadcasting and dtype promotion -------------------------------------------------------

#[test]
fn broadcasting_values() {
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    let b = Tensor::from_slice(&[10.0f32, 20.0, 30.0]);
    let c = &a + &b;
    assert_eq!(c.shape(), &[2, 3]);
    assert_eq!(f32s(&c), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);

    let col = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3, 1]);
    let row = Tensor::from_vec(vec![10.0f32, 20.0], [1, 2]);
    let outer = &col * &row;
    assert_eq!(outer.shape(), &[3, 2]);
    assert_eq!(f32s(&outer), vec![10.0, 20.0, 20.0, 40.0, 30.0, 60.0]);

    // A 0-d tensor broadcasts against anything.
    let s = Tensor::scalar(2.0f32);
    assert_eq!(f32s(&(&a * &s)), vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
}

#[test]
fn dtype_promotion_follows_pytorch() {
    let f = Tensor::from_slice(&[1.5f32, 2.5]);
    let d = Tensor::from_slice(&[1.0f64, 2.0]);
    let i = Tensor::from_slice(&[1i64, 2]);
    let b = Tensor::from_slice(&[true, false]);

    // Same category: the wider type.
    let fd = &f + &d;
    assert_eq!(fd.dtype(), DType::F64);
    assert_eq!(fd.to_vec::<f64>(), vec![2.5, 4.5]);
    // Float beats integer, whatever the width: i64 + f32 is f32, not i64.
    let fi = &i + &f;
    assert_eq!(fi.dtype(), DType::F32);
    assert_eq!(f32s(&fi), vec![2.5, 4.5]);
    assert_eq!((&f + &i).dtype(), DType::F32);
    // Integer beats bool.
    let ib = &i + &b;
    assert_eq!(ib.dtype(), DType::I64);
    assert_eq!(ib.to_vec::<i64>(), vec![2, 2]);
    // Float beats bool.
    assert_eq!((&b * &f).dtype(), DType::F32);
    assert_eq!(f32s(&(&b * &f)), vec![1.5, 0.0]);
    // Comparisons across dtypes compare values (0.5 < 1 is true), not truncated values.
    let half = Tensor::from_slice(&[0.5f32, 2.5]);
    assert_eq!(half.lt(&i).to_vec::<bool>(), vec![true, false]);

    // A 0-d tensor of the same category does not widen a dimensioned tensor:
    // torch.ones(2) + torch.tensor(1., dtype=torch.float64) is float32 ...
    let s64 = Tensor::scalar(1.0f64);
    assert_eq!((&f + &s64).dtype(), DType::F32);
    // ... but one of a higher category does: int tensor + 0-d float tensor is float.
    let s32 = Tensor::scalar(0.5f32);
    assert_eq!((&i + &s32).dtype(), DType::F32);
    assert_eq!(f32s(&(&i + &s32)), vec![1.5, 2.5]);
    // Two 0-d tensors promote normally.
    assert_eq!((&Tensor::scalar(1.0f32) + &s64).dtype(), DType::F64);

    // cat promotes too: torch.cat([int64, float32]) is float32.
    let c = cat(&[&i, &f], 0);
    assert_eq!(c.dtype(), DType::F32);
    assert_eq!(f32s(&c), vec![1.0, 2.0, 1.5, 2.5]);
}

#[test]
fn scalar_promotion_follows_pytorch() {
    let i = Tensor::from_slice(&[1i64, 2]);
    // int tensor + float scalar -> default float dtype.
    let h = &i + 0.5;
    assert_eq!(h.dtype(), DType::F32);
    assert_eq!(f32s(&h), vec![1.5, 2.5]);
    // Even when the float scalar happens to be integral: torch.tensor([1, 2]) * 2.0 is float.
    let two = &i * 2.0;
    assert_eq!(two.dtype(), DType::F32);
    assert_eq!(f32s(&two), vec![2.0, 4.0]);
    // int tensor with an int scalar stays int.
    let k = i.mul(3i64);
    assert_eq!(k.dtype(), DType::I64);
    assert_eq!(k.to_vec::<i64>(), vec![3, 6]);
    assert_eq!(i.add(1i32).to_vec::<i64>(), vec![2, 3]);
    // True division of integers is float.
    let q = &i / 2.0;
    assert_eq!(q.dtype(), DType::F32);
    assert_eq!(f32s(&q), vec![0.5, 1.0]);
    assert_eq!(i.div(2i64).dtype(), DType::F32);
    // A float tensor keeps its dtype with any scalar.
    let f = Tensor::from_slice(&[1.0f64, 2.0]);
    assert_eq!((&f * 3.0).dtype(), DType::F64);
    assert_eq!(f.mul(3i64).dtype(), DType::F64);
    // bool with an int scalar is int, with a float scalar float.
    let b = Tensor::from_slice(&[true, false]);
    assert_eq!(b.add(1i64).dtype(), DType::I64);
    assert_eq!(b.add(1i64).to_vec::<i64>(), vec![2, 1]);
    assert_eq!(b.mul(1.5).dtype(), DType::F32);
    // where with scalars: two float scalars give f32, two int scalars i64.
    assert_eq!(where_(&b, 1.0, 0.0).dtype(), DType::F32);
    assert_eq!(where_(&b, 1i64, 0i64).dtype(), DType::I64);
    assert_eq!(where_(&b, 1i64, 0i64).to_vec::<i64>(), vec![1, 0]);
    assert_eq!(where_(&b, &i, 0.5).dtype(), DType::F32);
    assert_eq!(f32s(&where_(&b, &i, 0.5)), vec![1.0, 0.5]);
}

#[test]
fn comparisons_give_bool() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let m = x.gt(1.5);
    assert_eq!(m.dtype(), DType::Bool);
    assert_eq!(m.to_vec::<bool>(), vec![false, true, true]);
    assert_eq!(x.le(2.0).to_vec::<bool>(), vec![true, true, false]);
    assert_eq!(x.eq(2.0).to_vec::<bool>(), vec![false, true, false]);
    assert_eq!(x.ne(2.0).to_vec::<bool>(), vec![true, false, true]);
    assert_eq!(x.ge(&x).to_vec::<bool>(), vec![true; 3]);
    // Integer comparisons with a fractional scalar compare as floats: 1 > 0.5.
    let i = Tensor::from_slice(&[0i64, 1]);
    assert_eq!(i.gt(0.5).to_vec::<bool>(), vec![false, true]);
    // Summing a mask counts (as int64).
    let n = m.sum_all();
    assert_eq!(n.dtype(), DType::I64);
    assert_eq!(n.item(), 2.0);
}

#[test]
fn scalar_operators_on_both_sides() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 4.0]);
    assert_eq!(f32s(&(2.0 - &x)), vec![1.0, 0.0, -2.0]);
    assert_eq!(f32s(&(&x - 2.0)), vec![-1.0, 0.0, 2.0]);
    assert_eq!(f32s(&(1.0 / &x)), vec![1.0, 0.5, 0.25]);
    assert_eq!(f32s(&(&x / 2.0)), vec![0.5, 1.0, 2.0]);
    assert_eq!(f32s(&(3.0 * &x)), vec![3.0, 6.0, 12.0]);
    assert_eq!(f32s(&(1.0 + &x)), vec![2.0, 3.0, 5.0]);
    assert_eq!(f32s(&(-&x)), vec![-1.0, -2.0, -4.0]);
    assert_eq!(f32s(&(2.0 - x.clone())), vec![1.0, 0.0, -2.0]);
    assert_eq!(f32s(&x.pow(2.0)), vec![1.0, 4.0, 16.0]);
    // The scalar on the left of an integer tensor follows the same promotion.
    let i = Tensor::from_slice(&[1i64, 2]);
    assert_eq!((2.0 - &i).dtype(), DType::F32);
    assert_eq!(f32s(&(1.0 / &i)), vec![1.0, 0.5]);
}

// ----- autograd ---------------------------------------------------------------------------------

#[test]
fn tutorial_autograd_example() {
    let x = Tensor::ones([2, 2]).requires_grad_(true);
    let y = &x + 2.0;
    assert_eq!(y.grad_fn().as_deref(), Some("AddBackward0"));
    let z = &y * &y * 3.0;
    assert_eq!(z.grad_fn().as_deref(), Some("MulBackward0"));
    let out = z.mean_all();
    assert_eq!(out.grad_fn().as_deref(), Some("MeanBackward0"));
    assert_eq!(f32s(&z), vec![27.0; 4]);
    out.backward();
    assert_eq!(out.item(), 27.0);
    // d(out)/dx = 6 (x + 2) / 4 = 4.5
    assert_eq!(grad_of(&x), vec![4.5; 4]);
    assert!(x.is_leaf() && x.grad_fn().is_none());
    assert!(y.grad().is_none(), "only leaves get .grad");
}

#[test]
fn gradients_accumulate_until_zero_grad() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let loss = || (&x * &x).sum_all();
    loss().backward();
    assert_eq!(grad_of(&x), vec![2.0, 4.0, 6.0]);
    loss().backward();
    assert_eq!(grad_of(&x), vec![4.0, 8.0, 12.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    loss().backward();
    assert_eq!(grad_of(&x), vec![2.0, 4.0, 6.0]);
    // The same output twice accumulates too (kiln keeps the graph).
    let l = (&x * 3.0).sum_all();
    x.zero_grad();
    l.backward();
    l.backward();
    assert_eq!(grad_of(&x), vec![6.0; 3]);
}

#[test]
fn backward_on_non_scalar_needs_a_gradient() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let y = &x * &x;
    let e = y.try_backward(None).unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    assert!(e.to_string().contains("scalar"), "{e}");
    let msg = panic_message(|| y.backward());
    assert!(msg.contains("scalar"), "{msg}");
    assert!(x.grad().is_none());

    // y.backward(v) computes v^T J: d(x_i^2)/dx_i * v_i = 2 x_i v_i.
    let v = Tensor::from_slice(&[1.0f32, 0.1, 0.01]);
    y.try_backward(Some(&v)).unwrap();
    assert_close(&grad_of(&x), &[2.0, 0.4, 0.06], 1e-6);

    // A gradient of the wrong shape is an error.
    let e = y.try_backward(Some(&Tensor::ones([2]))).unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
}

#[test]
fn backward_with_a_gradient_of_another_float_dtype() {
    // PyTorch casts the given gradient to the output's dtype.
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let y = &x * 3.0;
    y.try_backward(Some(&Tensor::from_slice(&[1.0f64, 2.0])))
        .unwrap();
    assert_eq!(grad_of(&x), vec![3.0, 6.0]);
}

#[test]
fn backward_without_grad_is_an_error() {
    let x = Tensor::from_slice(&[1.0f32]);
    let e = (&x * 2.0).sum_all().try_backward(None).unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
}

#[test]
fn no_grad_results_do_not_require_grad_and_block_gradients() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let c = no_grad(|| &x * 2.0);
    assert!(!c.requires_grad());
    assert!(c.grad_fn().is_none());
    assert!(kiln::is_grad_enabled());
    // d/dx (x * c) with c = 2x held constant is c = 2x, not 4x.
    (&x * &c).sum_all().backward();
    assert_eq!(grad_of(&x), vec![2.0, 4.0, 6.0]);

    // Nested guards: grad mode comes back only when the outer one ends.
    {
        let _g = kiln::NoGradGuard::new();
        no_grad(|| assert!(!kiln::is_grad_enabled()));
        assert!(!kiln::is_grad_enabled());
        assert!(!(&x + 1.0).requires_grad());
    }
    assert!(kiln::is_grad_enabled());
    assert!((&x + 1.0).requires_grad());
}

#[test]
fn no_grad_value_realised_before_use_also_blocks_gradients() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let c = no_grad(|| &x * 2.0);
    assert_eq!(f32s(&c), vec![2.0, 4.0, 6.0]);
    (&x * &c).sum_all().backward();
    assert_eq!(grad_of(&x), vec![2.0, 4.0, 6.0]);
}

#[test]
fn detach_of_a_lazy_tensor_cuts_the_gradient() {
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let d = (&x * 3.0).detach();
    assert!(!d.requires_grad());
    assert!(!d.is_realized(), "detach does not compute anything");
    // d/dx (x * d) with d = 3x constant is d = 3x.
    (&x * &d).sum_all().backward();
    assert_eq!(grad_of(&x), vec![3.0, 6.0]);
    assert_eq!(f32s(&d), vec![3.0, 6.0]);
}

#[test]
fn detach_of_a_realised_tensor_shares_storage() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let mut d = x.detach();
    assert!(!d.requires_grad());
    assert_eq!(d.data_ptr(), x.data_ptr());
    // An in-place change through the detached handle is seen by the original (no no_grad
    // needed: the detached handle does not require grad).
    d.add_(1.0).unwrap();
    assert_eq!(f32s(&x), vec![2.0, 3.0, 4.0]);
    assert!(x.requires_grad());

    // The same for a realised intermediate.
    let a = Tensor::from_slice(&[1.0f32, 2.0]);
    let y = &a * 10.0;
    assert_eq!(f32s(&y), vec![10.0, 20.0]);
    let mut dy = y.detach();
    assert_eq!(dy.data_ptr(), y.data_ptr());
    dy.mul_(2.0).unwrap();
    assert_eq!(f32s(&y), vec![20.0, 40.0]);
}

#[test]
fn requires_grad_only_on_leaves_and_floats() {
    let x = Tensor::from_slice(&[1.0f32]).requires_grad_(true);
    let y = &x * 2.0;
    let e = y.clone().try_requires_grad_(true).unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    let msg = panic_message(|| y.clone().requires_grad_(false));
    assert!(msg.contains("leaf"), "{msg}");
    let e = Tensor::from_slice(&[1i64])
        .try_requires_grad_(true)
        .unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    // A detached result is a leaf again.
    let d = y.detach().requires_grad_(true);
    assert!(d.requires_grad() && d.is_leaf());
    (&d * 5.0).sum_all().backward();
    assert_eq!(grad_of(&d), vec![5.0]);
    assert!(x.grad().is_none());
}

#[test]
fn in_place_on_a_leaf_requiring_grad_needs_no_grad() {
    let mut p = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let e = p.add_(1.0).unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    assert_eq!(
        f32s(&p),
        vec![1.0, 2.0],
        "a failed in-place op changes nothing"
    );
    no_grad(|| p.add_(1.0)).unwrap();
    assert_eq!(f32s(&p), vec![2.0, 3.0]);
    assert!(p.requires_grad(), "still a parameter");
    no_grad(|| p.mul_(2.0)).unwrap();
    no_grad(|| p.sub_(1.0)).unwrap();
    assert_eq!(f32s(&p), vec![3.0, 5.0]);
    no_grad(|| p.zero_()).unwrap();
    assert_eq!(f32s(&p), vec![0.0, 0.0]);
    no_grad(|| p.copy_(&Tensor::scalar(7.0f64))).unwrap();
    assert_eq!(p.dtype(), DType::F32);
    assert_eq!(f32s(&p), vec![7.0, 7.0]);
}

#[test]
fn in_place_keeps_dtype_and_buffer() {
    // An integer tensor cannot take a float result in place (PyTorch: "result type Float can't
    // be cast to the desired output type Long"), and a failed op changes nothing.
    let mut i = Tensor::from_slice(&[1i64, 2]);
    assert!(matches!(i.add_(0.5), Err(Error::DType(_))));
    assert!(matches!(i.mul_(2.0), Err(Error::DType(_))));
    assert_eq!(i.to_vec::<i64>(), vec![1, 2]);
    i.mul_(3i64).unwrap();
    assert_eq!(i.to_vec::<i64>(), vec![3, 6]);
    // copy_ and fill_ convert.
    i.copy_(&Tensor::from_slice(&[2.7f32, -1.5])).unwrap();
    assert_eq!(i.to_vec::<i64>(), vec![2, -1]);
    i.fill_(4.0).unwrap();
    assert_eq!(i.to_vec::<i64>(), vec![4, 4]);
    // A float tensor takes an f64 result, converted to its dtype.
    let mut f = Tensor::from_slice(&[1.0f32, 2.0]);
    f.add_(&Tensor::from_slice(&[0.5f64, 0.25])).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    assert_eq!(f32s(&f), vec![1.5, 2.25]);
    // Nothing else holds the buffer: it is updated where it is.
    let ptr = f.data_ptr();
    f.mul_(2.0).unwrap();
    assert_eq!(f.data_ptr(), ptr);
    assert_eq!(f32s(&f), vec![3.0, 4.5]);
}

#[test]
fn gradient_rules_pytorch_users_rely_on() {
    // Broadcasting sums the gradient over the broadcast axes.
    let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    (&Tensor::ones([2, 3]) * &b).sum_all().backward();
    assert_eq!(grad_of(&b), vec![2.0, 2.0, 2.0]);

    // relu'(0) = 0; clamp passes the gradient at its bounds (inclusive).
    let x = Tensor::from_slice(&[-1.0f32, 0.0, 2.0]).requires_grad_(true);
    x.relu().sum_all().backward();
    assert_eq!(grad_of(&x), vec![0.0, 0.0, 1.0]);
    x.zero_grad();
    x.clamp(Some(0.0), Some(2.0)).sum_all().backward();
    assert_eq!(grad_of(&x), vec![0.0, 1.0, 1.0]);

    // maximum and amax split the gradient evenly on ties.
    let a = Tensor::from_slice(&[1.0f32, 3.0]).requires_grad_(true);
    let c = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    a.maximum(&c).sum_all().backward();
    assert_eq!(grad_of(&a), vec![0.5, 1.0]);
    assert_eq!(grad_of(&c), vec![0.5, 0.0]);
    let t = Tensor::from_slice(&[2.0f32, 1.0, 2.0]).requires_grad_(true);
    t.amax(&[0], false).backward();
    assert_eq!(grad_of(&t), vec![0.5, 0.0, 0.5]);

    // Gradients flow through an intermediate that was already computed: d/dx (2x)^2 = 8x.
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let y = &x * 2.0;
    assert_eq!(f32s(&y), vec![2.0, 4.0]);
    (&y * &y).sum_all().backward();
    assert_eq!(grad_of(&x), vec![8.0, 16.0]);

    // d/dx sigmoid(x) at 0 is 1/4; d/dx tanh(x) at 0 is 1; d/dx exp(x) at 0 is 1; d/dx log(x) at
    // 2 is 1/2; d/dx sqrt(x) at 4 is 1/4.
    let z = Tensor::from_slice(&[0.0f32]).requires_grad_(true);
    z.sigmoid().sum_all().backward();
    assert_close(&grad_of(&z), &[0.25], 1e-6);
    z.zero_grad();
    (z.tanh() + z.exp()).sum_all().backward();
    assert_close(&grad_of(&z), &[2.0], 1e-6);
    let w = Tensor::from_slice(&[2.0f32, 4.0]).requires_grad_(true);
    (w.log().slice(0, 0, 1, 1).sum_all() + w.sqrt().slice(0, 1, 2, 1).sum_all()).backward();
    assert_close(&grad_of(&w), &[0.5, 0.25], 1e-6);
}

#[test]
fn masks_indices_and_casts_to_int_never_require_grad() {
    let x = Tensor::from_slice(&[0.0f32, 3.0, 2.0]).requires_grad_(true);
    let m = x.gt(1.0);
    assert!(!m.requires_grad() && m.grad_fn().is_none());
    assert_eq!(m.to_string(), "tensor([False,  True,  True])");
    let i = x.argmax(0, false);
    assert!(!i.requires_grad());
    assert_eq!(i.to_string(), "tensor(1)");
    assert!(!x.long().requires_grad());
    // ... while a float result of them and x does.
    let w = where_(&m, &x, 0.0);
    assert_eq!(w.grad_fn().as_deref(), Some("WhereBackward0"));
    w.sum_all().backward();
    assert_eq!(grad_of(&x), vec![0.0, 1.0, 1.0]);
}

#[test]
fn more_gradient_rules() {
    // d/dx x^2 = 2x (0 at 0, not nan); d/dp x^p = x^p ln x, taken as 0 at x = 0 as PyTorch.
    let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0]).requires_grad_(true);
    let p = Tensor::from_slice(&[2.0f32, 2.0, 2.0]).requires_grad_(true);
    x.pow(&p).sum_all().backward();
    assert_close(&grad_of(&x), &[0.0, 2.0, 4.0], 1e-6);
    assert_close(&grad_of(&p), &[0.0, 0.0, 4.0 * 2.0f32.ln()], 1e-6);
    // |x|' = sign(x), 0 at 0.
    x.zero_grad();
    x.abs().sum_all().backward();
    assert_eq!(grad_of(&x), vec![0.0, 1.0, 1.0]);
    // d/da (a / d) = 1/d, d/dd = -a/d^2.
    let a = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let d = Tensor::from_slice(&[2.0f32, 4.0]).requires_grad_(true);
    (&a / &d).sum_all().backward();
    assert_eq!(grad_of(&a), vec![0.5, 0.25]);
    assert_eq!(grad_of(&d), vec![-0.25, -0.125]);
    // cat splits the gradient back.
    let c = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let k = cat(&[&c, &(&c * 3.0)], 0);
    assert_eq!(k.grad_fn().as_deref(), Some("CatBackward0"));
    k.sum_all().backward();
    assert_eq!(grad_of(&c), vec![4.0, 4.0]);
    // An in-place op on an intermediate is part of the graph: y = 2x + 1.
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let mut y = &x * 2.0;
    y.add_(1.0).unwrap();
    assert_eq!(y.to_string(), "tensor([3., 5.], grad_fn=<AddBackward0>)");
    y.sum_all().backward();
    assert_eq!(grad_of(&x), vec![2.0, 2.0]);
    // backward itself may run under no_grad (as in PyTorch): it still accumulates.
    let l = (&x * &x).sum_all();
    no_grad(|| l.backward());
    assert_eq!(grad_of(&x), vec![4.0, 6.0]);
}

#[test]
fn leaves_not_in_the_graph_get_no_gradient() {
    let x = Tensor::from_slice(&[1.0f32]).requires_grad_(true);
    let unused = Tensor::from_slice(&[1.0f32]).requires_grad_(true);
    (&x * 2.0).sum_all().backward();
    assert!(unused.grad().is_none());
}

// ----- eager semantics under laziness ----------------------------------------------------------

#[test]
fn lazy_result_sees_the_value_before_a_later_in_place_update() {
    let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).requires_grad_(true);
    let y = &p * 2.0;
    let s = y.sum_all();
    let mut q = p.clone();
    no_grad(|| q.add_(1.0)).unwrap();
    assert_eq!(f32s(&p), vec![2.0, 3.0, 4.0]);
    assert_eq!(
        f32s(&y),
        vec![2.0, 4.0, 6.0],
        "y was recorded before the update"
    );
    assert_eq!(s.item(), 12.0);
    let z = &p * 2.0;
    assert_eq!(f32s(&z), vec![4.0, 6.0, 8.0], "z was recorded after it");

    // The same for data without grad, and for ops recorded on lazy results.
    let mut a = Tensor::from_slice(&[1.0f32, 2.0]);
    let b = &a + 1.0;
    let c = &b * &a;
    a.mul_(10.0).unwrap();
    assert_eq!(f32s(&c), vec![2.0, 6.0]);
    assert_eq!(f32s(&(&b * &a)), vec![20.0, 60.0]);
}

#[test]
fn in_place_on_an_intermediate_does_not_change_earlier_users() {
    let a = Tensor::from_slice(&[1.0f32, 2.0]);
    let mut y = &a * 2.0;
    let z = &y + 0.0;
    y.add_(1.0).unwrap();
    assert_eq!(f32s(&z), vec![2.0, 4.0]);
    assert_eq!(f32s(&y), vec![3.0, 5.0]);
}

#[test]
fn alias_write_after_realisation_does_not_change_earlier_users() {
    let a = Tensor::from_slice(&[1.0f32, 2.0]);
    let y = &a * 2.0; // lazy
    let z = &y + 1.0; // recorded while y is lazy: eagerly z = [3, 5]
    y.realize().unwrap();
    let mut d = y.detach(); // shares y's storage
    d.add_(100.0).unwrap();
    assert_eq!(f32s(&y), vec![102.0, 104.0]);
    assert_eq!(f32s(&z), vec![3.0, 5.0]);
}

#[test]
fn backward_uses_the_values_the_forward_saw() {
    // loss = sum(p * p) recorded, then p is updated under no_grad: the gradient is 2 * old p,
    // and a later loss sees the new p.
    let p = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let loss = (&p * &p).sum_all();
    let mut q = p.clone();
    no_grad(|| q.add_(1.0)).unwrap();
    loss.backward();
    assert_eq!(loss.item(), 5.0);
    assert_eq!(grad_of(&p), vec![2.0, 4.0]);
    p.zero_grad();
    let loss2 = (&p * &p).sum_all();
    loss2.backward();
    assert_eq!(loss2.item(), 13.0);
    assert_eq!(grad_of(&p), vec![4.0, 6.0]);
}

#[test]
fn sgd_steps_match_pytorch() {
    // p = 1, loss = p^2, lr 0.1, momentum 0.9:
    // step 1: g = 2, b = 2, p = 1 - 0.2 = 0.8; step 2: g = 1.6, b = 0.9*2 + 1.6 = 3.4,
    // p = 0.8 - 0.34 = 0.46.
    let p = Tensor::from_slice(&[1.0f32]).requires_grad_(true);
    let mut opt = Sgd::new(vec![p.clone()], 0.1).momentum(0.9);
    for want in [0.8f32, 0.46] {
        opt.zero_grad();
        let loss = (&p * &p).sum_all();
        loss.backward();
        opt.step().unwrap();
        assert_close(&f32s(&p), &[want], 1e-6);
    }
    // Plain SGD with weight decay 0.5: g = 2p + 0.5p = 2.5p; p = p - 0.1 * 2.5p = 0.75p.
    let p = Tensor::from_slice(&[2.0f32, -4.0]).requires_grad_(true);
    let mut opt = Sgd::new(vec![p.clone()], 0.1).weight_decay(0.5);
    let loss = (&p * &p).sum_all();
    loss.backward();
    opt.step().unwrap();
    assert_close(&f32s(&p), &[1.5, -3.0], 1e-6);
    assert_eq!(
        loss.item(),
        20.0,
        "the loss keeps the value the gradient was taken at"
    );
}

// ----- the ndarray bridge -----------------------------------------------------------------------

#[test]
fn from_ndarray_is_zero_copy_for_standard_layout() {
    let a = ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let ptr = a.as_ptr() as usize;
    let t = Tensor::from_ndarray(a);
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(t.data_ptr(), Some(ptr));
    assert_eq!(f32s(&t), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // The view shares the buffer too.
    let v = t.ndarray::<f32>().unwrap();
    assert_eq!(v.view().as_ptr() as usize, ptr);
    assert_eq!(v.view()[[1, 2]], 6.0);
}

#[test]
fn from_ndarray_handles_other_layouts() {
    // Transposed (column-major) array.
    let a = ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let at = a.reversed_axes();
    assert!(!at.is_standard_layout());
    let t = Tensor::from_ndarray(at);
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(f32s(&t), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // Reversed axis (negative stride).
    let mut r = ndarray::Array1::from(vec![1i64, 2, 3]);
    r.invert_axis(ndarray::Axis(0));
    assert_eq!(Tensor::from_ndarray(r).to_vec::<i64>(), vec![3, 2, 1]);
    // A sliced array whose data starts at an offset.
    let mut s = ndarray::Array1::from(vec![0.0f64, 1.0, 2.0, 3.0]);
    s.slice_collapse(ndarray::s![1..3]);
    let t = Tensor::from_ndarray(s);
    assert_eq!(t.dtype(), DType::F64);
    assert_eq!(t.to_vec::<f64>(), vec![1.0, 2.0]);
    // Round trip.
    let back = t.to_ndarray::<f64>().unwrap();
    assert_eq!(back.shape(), &[2]);
    assert_eq!(back.as_slice().unwrap(), &[1.0, 2.0]);
}

#[test]
fn ndarray_mut_writes_are_seen_by_the_tensor_but_not_by_earlier_ops() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let before = &t * 1.0; // recorded before the write
    {
        let mut m = t.ndarray_mut::<f32>().unwrap();
        m.view_mut()[[0, 1]] = 20.0;
    }
    assert_eq!(f32s(&t), vec![1.0, 20.0, 3.0, 4.0]);
    assert_eq!(f32s(&before), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(f32s(&(&t * 1.0)), vec![1.0, 20.0, 3.0, 4.0]);

    // Writes through a detached alias of a parameter are seen by the parameter.
    let p = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    assert!(matches!(p.ndarray_mut::<f32>(), Err(Error::Autograd(_))));
    let d = p.detach();
    d.ndarray_mut::<f32>().unwrap().view_mut()[0] = 5.0;
    assert_eq!(f32s(&p), vec![5.0, 2.0]);

    // Asking for the wrong element type is an error.
    assert!(matches!(t.ndarray::<f64>(), Err(Error::DType(_))));
}

#[test]
fn in_place_op_while_a_view_is_alive_is_a_borrow_error() {
    within(30, || {
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        let mut alias = t.clone();
        {
            let v = t.ndarray::<f32>().unwrap();
            let r = alias.add_(1.0);
            assert!(matches!(r, Err(Error::Borrow(_))), "{:?}", r.err());
            assert_eq!(v.view()[0], 1.0);
            // A second shared view is fine; a mutable one is not.
            assert!(t.ndarray::<f32>().is_ok());
            assert!(matches!(t.ndarray_mut::<f32>(), Err(Error::Borrow(_))));
        }
        {
            let _m = t.ndarray_mut::<f32>().unwrap();
            let r = alias.add_(1.0);
            assert!(matches!(r, Err(Error::Borrow(_))), "{:?}", r.err());
            assert!(matches!(alias.fill_(0.0), Err(Error::Borrow(_))));
            assert!(matches!(t.ndarray::<f32>(), Err(Error::Borrow(_))));
        }
        alias.add_(1.0).unwrap();
        assert_eq!(f32s(&t), vec![2.0, 3.0]);
    });
}

#[test]
fn in_place_on_a_realised_intermediate_while_a_mutable_view_is_alive() {
    within(30, || {
        let a = Tensor::from_slice(&[1.0f32, 2.0]);
        let y = &a * 2.0;
        y.realize().unwrap();
        let mut alias = y.clone();
        let _m = y.ndarray_mut::<f32>().unwrap();
        assert!(matches!(alias.add_(1.0), Err(Error::Borrow(_))));
    });
}

// ----- Display ----------------------------------------------------------------------------------

#[test]
fn display_follows_pytorch() {
    let show = |t: &Tensor| t.to_string();
    assert_eq!(
        show(&Tensor::ones([2, 2])),
        "tensor([[1., 1.],\n        [1., 1.]])"
    );
    assert_eq!(show(&Tensor::scalar(27.0f32)), "tensor(27.)");
    assert_eq!(
        show(&Tensor::from_slice(&[0.5f32, -1.25, 4.5])),
        "tensor([ 0.5000, -1.2500,  4.5000])"
    );
    assert_eq!(
        show(&Tensor::from_slice(&[1e-5f32, 1.0])),
        "tensor([1.0000e-05, 1.0000e+00])"
    );
    assert_eq!(
        show(&Tensor::from_slice(&[1.0f32, 2.0, 3.0]).gt(1.5)),
        "tensor([False,  True,  True])"
    );
    assert_eq!(show(&Tensor::from_slice(&[7i64, -3])), "tensor([ 7, -3])");
    assert_eq!(
        show(&Tensor::from_slice(&[1.5f64, 2.0])),
        "tensor([1.5000, 2.0000], dtype=kiln.float64)"
    );
    assert_eq!(
        show(&Tensor::from_vec(vec![1.5f32, -2.25, 3.0, 4.125], [2, 2])),
        "tensor([[ 1.5000, -2.2500],\n        [ 3.0000,  4.1250]])"
    );
    // Integer-valued floats whose magnitudes span more than 1000x print in scientific notation
    // (torch.tensor([1., 2000.]) -> tensor([1.0000e+00, 2.0000e+03])); up to 1e8 they do not.
    assert_eq!(
        show(&Tensor::from_slice(&[1.0f32, 2000.0])),
        "tensor([1.0000e+00, 2.0000e+03])"
    );
    assert_eq!(
        show(&Tensor::from_slice(&[1.0f32, 1000.0])),
        "tensor([   1., 1000.])"
    );
    assert_eq!(show(&Tensor::from_slice(&[1e8f32])), "tensor([100000000.])");
    // inf and nan are padded to the width of the finite values but do not widen it.
    assert_eq!(
        show(&Tensor::from_slice(&[1.0f32, f32::INFINITY])),
        "tensor([1., inf])"
    );
    assert_eq!(
        show(&Tensor::from_slice(&[1.5f32, f32::INFINITY, f32::NAN])),
        "tensor([1.5000,    inf,    nan])"
    );
    assert_eq!(
        show(&Tensor::from_slice(&[f32::NEG_INFINITY, 0.0, 10.0])),
        "tensor([-inf,  0., 10.])"
    );
    // Empty tensors: PyTorch prints the size as a tuple.
    assert_eq!(show(&Tensor::zeros([0])), "tensor([])");
    assert_eq!(show(&Tensor::zeros([0, 3])), "tensor([], size=(0, 3))");
    // Summarised: torch.arange(2000.) (the min/max ratio makes it scientific, and the line wraps
    // at 80 columns).
    assert_eq!(
        show(&Tensor::arange(0.0, 2000.0, 1.0, DType::F32)),
        "tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n        1.9990e+03])"
    );
    assert_eq!(
        show(&Tensor::arange(0.0, 1001.0, 1.0, DType::I64)),
        "tensor([   0,    1,    2,  ...,  998,  999, 1000])"
    );
    // Summarised rows and columns, and the blank line between 3-D blocks.
    assert_eq!(
        show(&Tensor::arange(0.0, 2000.0, 1.0, DType::I64).reshape(&[2, 1000])),
        "tensor([[   0,    1,    2,  ...,  997,  998,  999],\n        [1000, 1001, 1002,  ..., 1997, 1998, 1999]])"
    );
    assert_eq!(
        show(&Tensor::zeros([1001, 2]).long()),
        "tensor([[0, 0],\n        [0, 0],\n        [0, 0],\n        ...,\n        [0, 0],\n        [0, 0],\n        [0, 0]])"
    );
    assert_eq!(
        show(&Tensor::zeros([2, 2, 2])),
        "tensor([[[0., 0.],\n         [0., 0.]],\n\n        [[0., 0.],\n         [0., 0.]]])"
    );
}

#[test]
fn display_shows_autograd_state() {
    let x = Tensor::ones([2]).requires_grad_(true);
    assert_eq!(x.to_string(), "tensor([1., 1.], requires_grad=True)");
    let y = &x + 2.0;
    assert_eq!(y.to_string(), "tensor([3., 3.], grad_fn=<AddBackward0>)");
    assert_eq!(
        (&y * &y).to_string(),
        "tensor([9., 9.], grad_fn=<MulBackward0>)"
    );
    assert_eq!(
        y.mean_all().to_string(),
        "tensor(3., grad_fn=<MeanBackward0>)"
    );
    assert_eq!(
        y.sum_all().to_string(),
        "tensor(6., grad_fn=<SumBackward0>)"
    );
    assert_eq!(
        x.relu().to_string(),
        "tensor([1., 1.], grad_fn=<ReluBackward0>)"
    );
    assert_eq!(
        (-&x).to_string(),
        "tensor([-1., -1.], grad_fn=<NegBackward0>)"
    );
    assert_eq!(x.detach().to_string(), "tensor([1., 1.])");
    assert_eq!(no_grad(|| (&x * 2.0).to_string()), "tensor([2., 2.])");
    let d = Tensor::from_slice(&[1.0f64]).requires_grad_(true);
    assert_eq!(
        d.to_string(),
        "tensor([1.], dtype=kiln.float64, requires_grad=True)"
    );
}

#[test]
fn tensors_move_between_threads_and_grad_mode_is_per_thread() {
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    let y = &x * 3.0;
    let _g = kiln::NoGradGuard::new();
    let handle = std::thread::spawn(move || {
        // Grad mode is thread-local, as in PyTorch: this thread records.
        assert!(kiln::is_grad_enabled());
        let l = y.sum_all();
        l.backward();
        f32s(&l)
    });
    assert_eq!(handle.join().unwrap(), vec![9.0]);
    assert_eq!(grad_of(&x), vec![3.0, 3.0]);
}

// ----- movement ops -----------------------------------------------------------------------------

fn arange(n: usize) -> Tensor {
    Tensor::arange(0.0, n as f64, 1.0, DType::F32)
}

fn range_vec(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn reshape_flatten_squeeze() {
    let x = arange(24);
    let r = x.reshape(&[2, -1, 4]);
    assert_eq!(r.shape(), &[2, 3, 4]);
    assert_eq!(f32s(&r), range_vec(24));
    assert_eq!(x.view(&[-1, 6]).shape(), &[4, 6]);
    assert_eq!(r.flatten(1, -1).shape(), &[2, 12]);
    assert_eq!(r.flatten(0, -1).shape(), &[24]);
    assert_eq!(r.flatten(0, 1).shape(), &[6, 4]);
    assert_eq!(Tensor::scalar(1.0f32).flatten(0, -1).shape(), &[1]);
    let m = arange(6).reshape(&[2, 3]);
    assert_eq!(m.unsqueeze(0).shape(), &[1, 2, 3]);
    assert_eq!(m.unsqueeze(-1).shape(), &[2, 3, 1]);
    assert_eq!(m.unsqueeze(1).shape(), &[2, 1, 3]);
    assert_eq!(m.unsqueeze(0).squeeze(0).shape(), &[2, 3]);
    assert_eq!(m.unsqueeze(-1).squeeze(-1).shape(), &[2, 3]);
    assert_eq!(
        m.squeeze(0).shape(),
        &[2, 3],
        "squeezing a non-1 axis is a no-op"
    );
    assert_eq!(m.size(-1), 3);
    assert_eq!(m.size(0), 2);
}

#[test]
fn permute_and_transpose_move_values() {
    let x = arange(24).reshape(&[2, 3, 4]);
    let p = x.permute(&[2, 0, 1]);
    assert_eq!(p.shape(), &[4, 2, 3]);
    // p[i, j, k] = x[j, k, i] = 12 j + 4 k + i
    let mut want = Vec::new();
    for i in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                want.push((12 * j + 4 * k + i) as f32);
            }
        }
    }
    assert_eq!(f32s(&p), want);
    assert_eq!(f32s(&x.permute(&[-1, 0, 1])), want);

    let m = arange(6).reshape(&[2, 3]);
    let t = m.transpose(0, 1);
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(f32s(&t), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(
        f32s(&m.transpose(-1, -2)),
        vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
    assert_eq!(f32s(&m.t()), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let e = x.try_permute(&[0, 0, 1]).unwrap_err();
    assert!(e.to_string().contains("permut"), "{e}");
}

#[test]
fn slice_narrow_with_python_rules() {
    let x = arange(10);
    assert_eq!(f32s(&x.slice(0, -3, 10, 1)), vec![7.0, 8.0, 9.0]);
    assert_eq!(f32s(&x.slice(0, 1, -1, 3)), vec![1.0, 4.0, 7.0]);
    assert_eq!(f32s(&x.slice(0, -100, 100, 4)), vec![0.0, 4.0, 8.0]);
    assert_eq!(
        x.slice(0, 5, 2, 1).shape(),
        &[0],
        "an empty range is empty, not an error"
    );
    let m = arange(12).reshape(&[3, 4]);
    let s = m.slice(-1, 1, 4, 2);
    assert_eq!(s.shape(), &[3, 2]);
    assert_eq!(f32s(&s), vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
    assert_eq!(f32s(&m.slice(0, -1, 3, 1)), vec![8.0, 9.0, 10.0, 11.0]);
    assert_eq!(f32s(&x.narrow(0, 2, 3)), vec![2.0, 3.0, 4.0]);
    assert_eq!(f32s(&m.narrow(-1, 3, 1)), vec![3.0, 7.0, 11.0]);
    assert!(x.try_slice(0, 0, 5, 0).is_err(), "step 0 is an error");
    // The gradient of a slice scatters back.
    let v = arange(5).requires_grad_(true);
    v.slice(0, 1, 5, 2).sum_all().backward();
    assert_eq!(grad_of(&v), vec![0.0, 1.0, 0.0, 1.0, 0.0]);
}

#[test]
fn pad_pads_last_axis_first_and_negative_crops() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let p = x.pad(&[1, 1], 0.0);
    assert_eq!(p.shape(), &[2, 4]);
    assert_eq!(f32s(&p), vec![0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0]);
    let p = x.pad(&[0, 0, 1, 0], 9.0);
    assert_eq!(p.shape(), &[3, 2]);
    assert_eq!(f32s(&p), vec![9.0, 9.0, 1.0, 2.0, 3.0, 4.0]);
    let v = arange(5);
    assert_eq!(
        f32s(&v.pad(&[-1, 2], 0.0)),
        vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0]
    );
    assert_eq!(f32s(&v.pad(&[-2, -1], 0.0)), vec![2.0, 3.0]);
    // Mixed: crop the first column, pad one row above and crop the last row.
    let m = arange(12).reshape(&[3, 4]);
    let q = F::pad(&m, &[-1, 0, 1, -1], 7.0);
    assert_eq!(q.shape(), &[3, 3]);
    assert_eq!(f32s(&q), vec![7.0, 7.0, 7.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
    assert!(
        v.try_pad(&[-3, -3], 0.0).is_err(),
        "cropping more than everything is an error"
    );
}

#[test]
fn cat_stack_expand() {
    let a = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2]);
    let b = Tensor::from_vec(vec![3.0f32, 4.0, 5.0, 6.0], [2, 2]);
    let c = cat(&[&a, &b], 0);
    assert_eq!(c.shape(), &[3, 2]);
    assert_eq!(f32s(&c), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let l = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]);
    let c = cat(&[&l, &b], -1);
    assert_eq!(c.shape(), &[2, 3]);
    assert_eq!(f32s(&c), vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);

    let u = Tensor::from_slice(&[1.0f32, 2.0]);
    let w = Tensor::from_slice(&[3.0f32, 4.0]);
    let s0 = stack(&[&u, &w], 0);
    assert_eq!(s0.shape(), &[2, 2]);
    assert_eq!(f32s(&s0), vec![1.0, 2.0, 3.0, 4.0]);
    let s1 = stack(&[&u, &w], 1);
    assert_eq!(f32s(&s1), vec![1.0, 3.0, 2.0, 4.0]);
    assert_eq!(f32s(&stack(&[&u, &w], -1)), vec![1.0, 3.0, 2.0, 4.0]);

    let col = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3, 1]);
    let e = col.expand(&[-1, 4]);
    assert_eq!(e.shape(), &[3, 4]);
    assert_eq!(
        f32s(&e),
        vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    );
    assert_eq!(col.expand(&[2, -1, -1]).shape(), &[2, 3, 1]);
    assert_eq!(col.expand(&[2, -1, 2]).numel(), 12);
    // The gradient of expand sums.
    let g = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]).requires_grad_(true);
    g.expand(&[-1, 3]).sum_all().backward();
    assert_eq!(grad_of(&g), vec![3.0, 3.0]);
}

#[test]
fn matmul_shapes_and_values() {
    let v = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let w = Tensor::from_slice(&[4.0f32, 5.0, 6.0]);
    let dot = v.matmul(&w);
    assert_eq!(dot.shape(), &[] as &[usize]);
    assert_eq!(dot.item(), 32.0);

    let m = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let n = Tensor::from_vec(vec![5.0f32, 6.0, 7.0, 8.0], [2, 2]);
    let ones = Tensor::from_slice(&[1.0f32, 1.0]);
    let mv = m.matmul(&ones);
    assert_eq!(mv.shape(), &[2]);
    assert_eq!(f32s(&mv), vec![3.0, 7.0]);
    let vm = ones.matmul(&m);
    assert_eq!(vm.shape(), &[2]);
    assert_eq!(f32s(&vm), vec![4.0, 6.0]);
    let mm = m.matmul(&n);
    assert_eq!(f32s(&mm), vec![19.0, 22.0, 43.0, 50.0]);

    // Batched with broadcast: A [2,1,2,2] (I, 2I) @ B [3,2,2] ((k+1) M) -> [2,3,2,2],
    // out[i, k] = (i+1)(k+1) M.
    let eye = [1.0f32, 0.0, 0.0, 1.0];
    let a: Vec<f32> = eye
        .iter()
        .copied()
        .chain(eye.iter().map(|x| 2.0 * x))
        .collect();
    let a = Tensor::from_vec(a, [2, 1, 2, 2]);
    let mvals = [1.0f32, 2.0, 3.0, 4.0];
    let b: Vec<f32> = (1..=3)
        .flat_map(|k| mvals.iter().map(move |x| k as f32 * x))
        .collect();
    let b = Tensor::from_vec(b, [3, 2, 2]);
    let out = a.matmul(&b);
    assert_eq!(out.shape(), &[2, 3, 2, 2]);
    let mut want = Vec::new();
    for i in 1..=2 {
        for k in 1..=3 {
            want.extend(mvals.iter().map(|x| (i * k) as f32 * x));
        }
    }
    assert_eq!(f32s(&out), want);

    // Batched @ 1-D and 1-D @ batched.
    let bt = arange(12).reshape(&[2, 2, 3]);
    let r = bt.matmul(&v);
    assert_eq!(r.shape(), &[2, 2]);
    // rows [0,1,2]·[1,2,3] = 8, [3,4,5]· = 26, [6,7,8]· = 44, [9,10,11]· = 62
    assert_eq!(f32s(&r), vec![8.0, 26.0, 44.0, 62.0]);
    let r = ones.matmul(&bt);
    assert_eq!(r.shape(), &[2, 3]);
    assert_eq!(f32s(&r), vec![3.0, 5.0, 7.0, 15.0, 17.0, 19.0]);

    // Gradients: d/dA sum(A B) = 1 B^T, d/dB = A^T 1.
    let ag = m.detach().requires_grad_(true);
    let bg = n.detach().requires_grad_(true);
    ag.matmul(&bg).sum_all().backward();
    assert_eq!(grad_of(&ag), vec![11.0, 15.0, 11.0, 15.0]);
    assert_eq!(grad_of(&bg), vec![4.0, 4.0, 6.0, 6.0]);
}

// ----- reductions -------------------------------------------------------------------------------

#[test]
fn reductions_over_negative_dims() {
    let x = Tensor::from_vec(vec![1.0f32, 5.0, 3.0, 4.0, 2.0, 6.0], [2, 3]);
    let s = x.sum(&[-1], false);
    assert_eq!(s.shape(), &[2]);
    assert_eq!(f32s(&s), vec![9.0, 12.0]);
    let s = x.sum(&[-1], true);
    assert_eq!(s.shape(), &[2, 1]);
    assert_eq!(f32s(&s), vec![9.0, 12.0]);
    let all = x.sum(&[0, -1], false);
    assert_eq!(all.shape(), &[] as &[usize]);
    assert_eq!(all.item(), 21.0);
    assert_eq!(x.sum_all().item(), 21.0);

    let m = x.mean(&[-2], false);
    assert_eq!(m.shape(), &[3]);
    assert_eq!(f32s(&m), vec![2.5, 3.5, 4.5]);
    assert_eq!(x.mean(&[-2], true).shape(), &[1, 3]);
    assert_eq!(x.mean_all().item(), 3.5);

    let a = x.amax(&[-1], false);
    assert_eq!(f32s(&a), vec![5.0, 6.0]);
    let a = x.amax(&[0], true);
    assert_eq!(a.shape(), &[1, 3]);
    assert_eq!(f32s(&a), vec![4.0, 5.0, 6.0]);
    assert_eq!(f32s(&x.amin(&[-1], false)), vec![1.0, 2.0]);
    assert_eq!(x.max_all().item(), 6.0);
    assert_eq!(x.min_all().item(), 1.0);
}

#[test]
fn zero_dim_tensors_accept_dim_0_and_minus_1() {
    // PyTorch treats a 0-d tensor as having one axis for `dim` arguments: 0 and -1 are valid.
    let s = Tensor::scalar(5.0f32);
    let r = s.sum(&[0], false);
    assert_eq!(r.shape(), &[] as &[usize]);
    assert_eq!(r.item(), 5.0);
    assert_eq!(s.sum(&[-1], true).shape(), &[] as &[usize]);
    assert_eq!(s.mean(&[0], false).item(), 5.0);
    assert_eq!(s.amax(&[-1], false).item(), 5.0);
    let i = s.argmax(0, false);
    assert_eq!((i.dtype(), i.shape()), (DType::I64, &[] as &[usize]));
    assert_eq!(i.item(), 0.0);
    assert_eq!(F::softmax(&s, 0).item(), 1.0);
    assert_eq!(F::log_softmax(&s, -1).item(), 0.0);
    assert_eq!(s.squeeze(0).shape(), &[] as &[usize]);
    assert_eq!(s.transpose(0, -1).shape(), &[] as &[usize]);
    assert_eq!(s.unsqueeze(-1).shape(), &[1]);
    // ... but it has no size and cannot be sliced: clear errors, not index panics.
    let line = line!() + 1;
    let msg = panic_message(|| s.size(0));
    check_shape_error(&msg, "size", &[], line);
    let line = line!() + 1;
    let e = s.try_narrow(0, 0, 1).unwrap_err();
    check_shape_error(&e.to_string(), "narrow", &[], line);
    let line = line!() + 1;
    let e = s.try_slice(-1, 0, 1, 1).unwrap_err();
    check_shape_error(&e.to_string(), "slice", &[], line);
    assert!(s.try_narrow(1, 0, 1).is_err() && s.try_slice(-2, 0, 1, 1).is_err());
    // A 0-d loss backpropagates through a dim-wise reduction.
    let x = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
    (&x * &x).sum_all().sum(&[0], false).backward();
    assert_eq!(grad_of(&x), vec![2.0, 4.0]);
}

#[test]
fn argmax_takes_the_first_maximum() {
    let x = Tensor::from_vec(vec![1.0f32, 3.0, 3.0, 2.0, 2.0, 1.0], [2, 3]);
    let i = x.argmax(-1, false);
    assert_eq!(i.dtype(), DType::I64);
    assert_eq!(i.shape(), &[2]);
    assert_eq!(i.to_vec::<i64>(), vec![1, 0]);
    let i = x.argmax(1, true);
    assert_eq!(i.shape(), &[2, 1]);
    assert_eq!(x.argmax(0, false).to_vec::<i64>(), vec![1, 0, 0]);
}

#[test]
fn var_unbiased_and_biased() {
    // [1,2,3,4]: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5; 5/3 and 5/4.
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    assert_close(&f32s(&x.var(&[0], true, false)), &[5.0 / 3.0], 1e-6);
    assert_close(&f32s(&x.var(&[0], false, false)), &[1.25], 1e-6);
    // Rows [1,2] and [3,5]: unbiased variances 0.5 and 2.
    let m = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 5.0], [2, 2]);
    let v = m.var(&[-1], true, true);
    assert_eq!(v.shape(), &[2, 1]);
    assert_close(&f32s(&v), &[0.5, 2.0], 1e-6);
}

// ----- functional -------------------------------------------------------------------------------

#[test]
fn softmax_is_normalised_and_stable() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 1000.0, 1000.0, 1000.0], [2, 3]);
    let s = F::softmax(&x, -1);
    // e^-2 = 0.135335, e^-1 = 0.367879, sum with 1 = 1.503214
    let third = 1.0 / 3.0;
    assert_close(
        &f32s(&s),
        &[0.090031, 0.244728, 0.665241, third, third, third],
        1e-5,
    );
    let rows = s.sum(&[-1], false);
    assert_close(&f32s(&rows), &[1.0, 1.0], 1e-6);

    let big = Tensor::from_slice(&[1000.0f32, 0.0]);
    assert_close(&f32s(&F::softmax(&big, 0)), &[1.0, 0.0], 1e-6);
    assert_close(&f32s(&F::log_softmax(&big, 0)), &[0.0, -1000.0], 1e-6);
    let tiny = Tensor::from_slice(&[-1000.0f32, 0.0]);
    assert_close(&f32s(&F::softmax(&tiny, 0)), &[0.0, 1.0], 1e-6);
    // The gradient of sum(softmax) is 0.
    let z = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).requires_grad_(true);
    F::softmax(&z, 0).sum_all().backward();
    assert_close(&grad_of(&z), &[0.0, 0.0, 0.0], 1e-6);
}

#[test]
fn cross_entropy_ignores_ignore_index() {
    // Row 0: logits [0,0,0], target 0: -log(1/3) = ln 3 = 1.0986123.
    // Row 1: target = ignore_index: contributes nothing, not even to the divisor.
    // Row 2: logits [ln 2, 0, 0], target 0: -log(2/4) = ln 2 = 0.6931472.
    let ln2 = std::f32::consts::LN_2;
    let ln3 = 3.0f32.ln();
    let logits = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0, ln2, 0.0, 0.0], [3, 3])
        .requires_grad_(true);
    let target = Tensor::from_slice(&[0i64, -100, 0]);
    let loss = F::cross_entropy(&logits, &target, None, -100, Reduction::Mean);
    assert_close(&[loss.item() as f32], &[(ln3 + ln2) / 2.0], 1e-6);
    loss.backward();
    // d/dlogits of the mean over 2 rows: (softmax - onehot) / 2; row 1 gets nothing.
    assert_close(
        &grad_of(&logits),
        &[
            (1.0 / 3.0 - 1.0) / 2.0,
            1.0 / 6.0,
            1.0 / 6.0,
            0.0,
            0.0,
            0.0,
            (0.5 - 1.0) / 2.0,
            0.125,
            0.125,
        ],
        1e-6,
    );
    let none = F::cross_entropy(&logits, &target, None, -100, Reduction::None);
    assert_close(&f32s(&none), &[ln3, 0.0, ln2], 1e-6);
    let sum = F::cross_entropy(&logits, &target, None, -100, Reduction::Sum);
    assert_close(&[sum.item() as f32], &[ln3 + ln2], 1e-6);
    // An ignore_index that is a real class.
    let t1 = Tensor::from_slice(&[0i64, 1, 0]);
    let l1 = F::cross_entropy(&logits, &t1, None, 1, Reduction::Mean);
    assert_close(&[l1.item() as f32], &[(ln3 + ln2) / 2.0], 1e-6);
    // A target out of range that is not ignored is an error naming it.
    let bad = Tensor::from_slice(&[0i64, 3, 0]);
    let msg = panic_message(|| F::cross_entropy(&logits, &bad, None, -100, Reduction::Mean));
    assert!(msg.contains('3'), "{msg}");
}

#[test]
fn cross_entropy_with_class_weights_is_a_weighted_mean() {
    // Row 0: [0,0,0] target 0, loss ln 3, weight 1. Row 1: [ln 2,0,0] target 2, loss
    // -log(1/4) = ln 4, weight 3. Weighted mean = (ln 3 + 3 ln 4) / (1 + 3).
    let ln2 = std::f32::consts::LN_2;
    let logits = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, ln2, 0.0, 0.0], [2, 3]);
    let target = Tensor::from_slice(&[0i64, 2]);
    let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let loss = F::cross_entropy(&logits, &target, Some(&w), -100, Reduction::Mean);
    let want = (3.0f32.ln() + 3.0 * 4.0f32.ln()) / 4.0;
    assert_close(&[loss.item() as f32], &[want], 1e-6);
    let none = F::cross_entropy(&logits, &target, Some(&w), -100, Reduction::None);
    assert_close(&f32s(&none), &[3.0f32.ln(), 3.0 * 4.0f32.ln()], 1e-6);
    // Unbatched input [C] with a 0-d target.
    let one = F::cross_entropy(
        &Tensor::from_slice(&[ln2, 0.0, 0.0]),
        &Tensor::scalar(0i64),
        None,
        -100,
        Reduction::Mean,
    );
    assert_close(&[one.item() as f32], &[ln2], 1e-6);
}

#[test]
fn mse_and_l1_losses() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 4.0]).requires_grad_(true);
    let y = Tensor::from_slice(&[1.0f32, 0.0, 1.0]);
    // (0 + 4 + 9) / 3
    let l = F::mse_loss(&x, &y, Reduction::Mean);
    assert_close(&[l.item() as f32], &[13.0 / 3.0], 1e-6);
    l.backward();
    // 2 (x - y) / 3
    assert_close(&grad_of(&x), &[0.0, 4.0 / 3.0, 2.0], 1e-6);
    assert_eq!(F::l1_loss(&x, &y, Reduction::Sum).item(), 5.0);
}

#[test]
fn max_pool_gives_the_gradient_to_the_first_maximum() {
    // All equal: PyTorch's kernel keeps the first index (it updates only on `>`).
    let x = Tensor::ones([1, 1, 2, 2]).requires_grad_(true);
    let y = F::max_pool2d(&x, &PoolOpts::kernel(&[2]));
    assert_eq!(y.shape(), &[1, 1, 1, 1]);
    y.sum_all().backward();
    assert_eq!(grad_of(&x), vec![1.0, 0.0, 0.0, 0.0]);

    // Overlapping windows [3,1], [1,3], [3,2]: indices 0, 2, 2.
    let v = Tensor::from_vec(vec![3.0f32, 1.0, 3.0, 2.0], [1, 4]).requires_grad_(true);
    let opts = PoolOpts {
        kernel_size: &[2],
        stride: &[1],
        padding: &[0],
        dilation: &[1],
    };
    let m = F::max_pool1d(&v, &opts);
    assert_eq!(f32s(&m), vec![3.0, 3.0, 3.0]);
    m.sum_all().backward();
    assert_eq!(grad_of(&v), vec![1.0, 0.0, 2.0, 0.0]);

    // 4x4, kernel 2: windows [[5,5],[1,2]] -> 5 at (0,0); [[0,7],[7,1]] -> 7 at (0,3);
    // [[2,9],[9,9]] -> 9 at (3,1); [[4,4],[4,4]] -> 4 at (2,2).
    let x = Tensor::from_vec(
        vec![
            5.0f32, 5.0, 0.0, 7.0, //
            1.0, 2.0, 7.0, 1.0, //
            2.0, 9.0, 4.0, 4.0, //
            9.0, 9.0, 4.0, 4.0,
        ],
        [1, 4, 4],
    )
    .requires_grad_(true);
    let y = F::max_pool2d(&x, &PoolOpts::kernel(&[2, 2]));
    assert_eq!(y.shape(), &[1, 2, 2]);
    assert_eq!(f32s(&y), vec![5.0, 7.0, 9.0, 4.0]);
    y.sum_all().backward();
    assert_eq!(
        grad_of(&x),
        vec![
            1.0, 0.0, 0.0, 1.0, //
            0.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 1.0, 0.0, //
            0.0, 0.0, 0.0, 0.0,
        ]
    );
}

#[test]
fn avg_pool_values() {
    let x = arange(16).reshape(&[1, 1, 4, 4]);
    let y = F::avg_pool2d(&x, &PoolOpts::kernel(&[2]));
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    // (0+1+4+5)/4, (2+3+6+7)/4, (8+9+12+13)/4, (10+11+14+15)/4
    assert_eq!(f32s(&y), vec![2.5, 4.5, 10.5, 12.5]);
    // Padding 1 counts the zeros in the divisor (count_include_pad=True).
    let opts = PoolOpts {
        kernel_size: &[2],
        stride: &[2],
        padding: &[1],
        dilation: &[1],
    };
    let y = F::avg_pool2d(&x, &opts);
    assert_eq!(y.shape(), &[1, 1, 3, 3]);
    assert_eq!(
        f32s(&y),
        vec![0.0, 0.75, 0.75, 3.0, 7.5, 4.5, 3.0, 6.75, 3.75]
    );
}

#[test]
fn conv2d_with_bias_by_hand() {
    // x = [[0,1,2],[3,4,5],[6,7,8]]; filter 0 = [[1,2],[3,4]], bias 10; filter 1 = ones, bias -1.
    let x = arange(9).reshape(&[1, 1, 3, 3]);
    let w = Tensor::from_vec(
        vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0],
        [2, 1, 2, 2],
    )
    .requires_grad_(true);
    let b = Tensor::from_slice(&[10.0f32, -1.0]).requires_grad_(true);
    let y = F::conv2d(&x, &w, Some(&b), &ConvOpts::default());
    assert_eq!(y.shape(), &[1, 2, 2, 2]);
    // filter 0: 0+2+9+16 = 27, 1+4+12+20 = 37, 3+8+18+28 = 57, 4+10+21+32 = 67, plus 10;
    // filter 1: window sums 8, 12, 20, 24, minus 1.
    assert_eq!(
        f32s(&y),
        vec![37.0, 47.0, 67.0, 77.0, 7.0, 11.0, 19.0, 23.0]
    );
    y.sum_all().backward();
    // d/dw[k] of the sum = sum of the input under kernel tap k over the 4 outputs.
    assert_eq!(
        grad_of(&w),
        vec![8.0, 12.0, 20.0, 24.0, 8.0, 12.0, 20.0, 24.0]
    );
    assert_eq!(grad_of(&b), vec![4.0, 4.0]);

    // Padding 1: a 4x4 output whose corners see one input corner each.
    let opts = ConvOpts {
        padding: &[1],
        ..Default::default()
    };
    let ones = Tensor::ones([1, 1, 2, 2]);
    let y = F::conv2d(&x, &ones, Some(&Tensor::from_slice(&[0.5f32])), &opts);
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    let v = f32s(&y);
    assert_eq!((v[0], v[3], v[12], v[15]), (0.5, 2.5, 6.5, 8.5));
    // Stride 2 over a 3x3 input with kernel 2: one output.
    let opts = ConvOpts {
        stride: &[2],
        ..Default::default()
    };
    assert_eq!(F::conv2d(&x, &ones, None, &opts).shape(), &[1, 1, 1, 1]);
}

#[test]
fn conv_transpose_and_grouped_conv_by_hand() {
    // Each input value scatters a 2x2 block of ones: overlapping sums with stride 1,
    // disjoint blocks with stride 2.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]);
    let ones = Tensor::ones([1, 1, 2, 2]);
    let y = F::conv_transpose2d(&x, &ones, None, &ConvOpts::default());
    assert_eq!(y.shape(), &[1, 1, 3, 3]);
    assert_eq!(f32s(&y), vec![1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
    let opts = ConvOpts {
        stride: &[2],
        ..Default::default()
    };
    let y = F::conv_transpose2d(&x, &ones, Some(&Tensor::from_slice(&[1.0f32])), &opts);
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    assert_eq!(
        f32s(&y),
        vec![
            2.0, 2.0, 3.0, 3.0, //
            2.0, 2.0, 3.0, 3.0, //
            4.0, 4.0, 5.0, 5.0, //
            4.0, 4.0, 5.0, 5.0,
        ]
    );
    // groups = 2: channel 0 [1,2,3] * [1,1] -> [3,5]; channel 1 [4,5,6] * [1,-1] -> [-1,-1].
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 2, 3]);
    let w = Tensor::from_vec(vec![1.0f32, 1.0, 1.0, -1.0], [2, 1, 2]);
    let opts = ConvOpts {
        groups: 2,
        ..Default::default()
    };
    assert_eq!(
        f32s(&F::conv1d(&x, &w, None, &opts)),
        vec![3.0, 5.0, -1.0, -1.0]
    );
    // Unbatched input [C, L] gives unbatched output.
    let xu = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    assert_eq!(F::conv1d(&xu, &w, None, &opts).shape(), &[2, 2]);
}

#[test]
fn more_losses_by_hand() {
    // Cross-entropy over [N, C, d]: zero logits give ln 2 at every position.
    let lg = Tensor::zeros([1, 2, 2]);
    let t = Tensor::from_vec(vec![0i64, 1], [1, 2]);
    let l = F::cross_entropy(&lg, &t, None, -100, Reduction::Mean);
    assert_close(&[l.item() as f32], &[std::f32::consts::LN_2], 1e-6);
    // BCE with logits, stable for large inputs: x=0,y=1 -> ln 2; x=100,y=0 -> 100.
    let b = F::binary_cross_entropy_with_logits(
        &Tensor::from_slice(&[0.0f32, 100.0]),
        &Tensor::from_slice(&[1.0f32, 0.0]),
        None,
        None,
        Reduction::None,
    );
    assert_close(&f32s(&b), &[std::f32::consts::LN_2, 100.0], 1e-6);
    // BCE on probabilities clamps log(0) at -100.
    let b = F::binary_cross_entropy(
        &Tensor::from_slice(&[0.0f32, 0.5]),
        &Tensor::from_slice(&[1.0f32, 1.0]),
        None,
        Reduction::None,
    );
    assert_close(&f32s(&b), &[100.0, std::f32::consts::LN_2], 1e-6);
}

#[test]
fn batch_norm_updates_running_stats_with_unbiased_var() {
    // x [N=2, C=2] = [[1, 2], [3, 6]]: channel 0 {1,3}: mean 2, biased var 1, unbiased 2;
    // channel 1 {2,6}: mean 4, biased var 4, unbiased 8.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 6.0], [2, 2]);
    let mut rm = Tensor::zeros([2]);
    let mut rv = Tensor::ones([2]);
    let eps = 1e-5;
    let y = F::batch_norm(&x, Some(&mut rm), Some(&mut rv), None, None, true, 0.1, eps);
    let a = 1.0 / (1.0f64 + eps).sqrt();
    let c = 2.0 / (4.0f64 + eps).sqrt();
    assert_close(&f32s(&y), &[-a as f32, -c as f32, a as f32, c as f32], 1e-6);
    // running = 0.9 running + 0.1 stat
    assert_close(&f32s(&rm), &[0.2, 0.4], 1e-6);
    assert_close(&f32s(&rv), &[1.1, 1.7], 1e-6);

    // Eval mode uses the running statistics, then the affine transform.
    let xe = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2]);
    let w = Tensor::from_slice(&[2.0f32, 1.0]);
    let b = Tensor::from_slice(&[0.5f32, 0.0]);
    let ye = F::batch_norm(
        &xe,
        Some(&mut rm),
        Some(&mut rv),
        Some(&w),
        Some(&b),
        false,
        0.1,
        eps,
    );
    let want0 = (1.0 - 0.2) / (1.1f64 + eps).sqrt() * 2.0 + 0.5;
    let want1 = (2.0 - 0.4) / (1.7f64 + eps).sqrt();
    assert_close(&f32s(&ye), &[want0 as f32, want1 as f32], 1e-5);
    // Eval does not touch the running statistics.
    assert_close(&f32s(&rm), &[0.2, 0.4], 1e-6);

    // 4-D input: statistics over N, H, W. x[:, 0] = {0..3}, x[:, 1] = {4..7} (N=1, 2x2).
    let x4 = arange(8).reshape(&[1, 2, 2, 2]);
    let mut rm = Tensor::zeros([2]);
    let mut rv = Tensor::zeros([2]);
    F::batch_norm(
        &x4,
        Some(&mut rm),
        Some(&mut rv),
        None,
        None,
        true,
        1.0,
        eps,
    );
    // means 1.5 and 5.5; unbiased var of {0,1,2,3} = (2.25+0.25+0.25+2.25)/3 = 5/3.
    assert_close(&f32s(&rm), &[1.5, 5.5], 1e-6);
    assert_close(&f32s(&rv), &[5.0 / 3.0, 5.0 / 3.0], 1e-6);
}

// ----- random -----------------------------------------------------------------------------------

#[test]
fn seeded_generators_repeat() {
    let a = Tensor::randn_with([64], DType::F32, &mut Generator::new(42));
    let b = Tensor::randn_with([64], DType::F32, &mut Generator::new(42));
    assert_eq!(f32s(&a), f32s(&b));
    let c = Tensor::randn_with([64], DType::F32, &mut Generator::new(43));
    assert_ne!(f32s(&a), f32s(&c));
    // Re-seeding restarts the stream; drawing continues it.
    let mut g = Generator::new(7);
    let first = f32s(&Tensor::rand_with([8], DType::F32, &mut g));
    let second = f32s(&Tensor::rand_with([8], DType::F32, &mut g));
    assert_ne!(first, second);
    g.manual_seed(7);
    assert_eq!(f32s(&Tensor::rand_with([8], DType::F32, &mut g)), first);
    // The default generator.
    kiln::manual_seed(3);
    let x = f32s(&Tensor::randn([16]));
    kiln::manual_seed(3);
    assert_eq!(f32s(&Tensor::randn([16])), x);
}

#[test]
fn random_ranges_and_moments() {
    let mut g = Generator::new(1);
    let u = Tensor::rand_with([20000], DType::F32, &mut g);
    let v = f32s(&u);
    assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    let d = Tensor::rand_with([1000], DType::F64, &mut g).to_vec::<f64>();
    assert!(d.iter().all(|&x| (0.0..1.0).contains(&x)));

    let n = Tensor::randn_with([20000], DType::F32, &mut g);
    let v = f32s(&n);
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
    assert!(
        mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
        "{mean} {var}"
    );

    let r = Tensor::randint_with(3, 7, [2000], &mut g);
    assert_eq!(r.dtype(), DType::I64);
    assert_eq!(r.shape(), &[2000]);
    let v = r.to_vec::<i64>();
    assert!(v.iter().all(|&x| (3..7).contains(&x)));
    for k in 3..7 {
        assert!(v.contains(&k), "{k} never drawn");
    }
    let neg = Tensor::randint_with(-2, 0, [100], &mut g).to_vec::<i64>();
    assert!(neg.iter().all(|&x| x == -2 || x == -1));
}

// ----- devices ----------------------------------------------------------------------------------

#[test]
fn cuda_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        // A `cuda` build: available exactly where the runtime finds a usable device.
        let want = if kiln::cuda_is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        assert_eq!(Device::cuda_if_available(), want);
    } else {
        assert!(!kiln::cuda_is_available());
        assert_eq!(Device::cuda_if_available(), Device::Cpu);
    }
    let t = Tensor::ones([2]);
    assert_eq!(t.device(), Device::Cpu);
    if kiln::cuda_is_available() {
        // A GPU machine (tests/cuda.rs covers the GPU side): the copy lives there.
        let g = t.to_device(Device::Cuda(0)).unwrap();
        assert_eq!(g.device(), Device::Cuda(0));
        assert_eq!(g.to_vec::<f32>(), vec![1.0, 1.0]);
        assert_eq!(g.to_device(Device::Cpu).unwrap().device(), Device::Cpu);
    } else {
        let e = t.to_device(Device::Cuda(0)).unwrap_err();
        assert!(matches!(e, Error::Device { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("cuda:0") && msg.contains("not available"),
            "{msg}"
        );
    }
    assert!(Device::Cuda(99).check().is_err());
    let same = t.to_device(Device::Cpu).unwrap();
    assert_eq!(same.id(), t.id());
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
}

// ----- traced graphs ----------------------------------------------------------------------------

#[test]
fn trace_prints_text_that_parses_back_and_verifies() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let w = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2]);
    w.set_name("w");
    let y = F::softmax(&x.matmul(&w).relu(), -1).sum(&[0], false);
    let g = kiln::trace(&[&y]).unwrap();
    kiln::ir::verify(&g).unwrap();
    assert!(g.inputs.contains_key("w"), "named tensors keep their names");
    assert_eq!(g.outputs.len(), 1);
    let t = text::print(&g);
    let parsed = text::parse(&t).unwrap();
    kiln::ir::verify(&parsed).unwrap();
    assert!(text::structurally_equal(&g, &parsed));
    assert_eq!(text::print(&parsed), t);
    // Tracing computes nothing.
    assert!(!y.is_realized());
    // Source locations point at this file.
    assert!(t.contains(file!()), "{t}");
}

#[test]
fn backward_graph_has_gradient_nodes_and_verifies() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let w = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2]).requires_grad_(true);
    w.set_name("fc.weight");
    let target = Tensor::from_slice(&[1i64, 0]);
    let loss = F::cross_entropy(&x.matmul(&w), &target, None, -100, Reduction::Mean);
    let g = kiln::autograd::backward_graph(&loss).unwrap();
    kiln::ir::verify(&g).unwrap();
    assert!(g.params.contains_key("fc.weight"));
    assert!(g.outputs.contains_key("loss"));
    let gw = g.outputs["grad.fc.weight"];
    assert_eq!(g.shape(gw), &[2, 2]);
    let tagged = g
        .node_ids()
        .into_iter()
        .filter(|&n| g.node(n).grad_of.is_some())
        .count();
    assert!(tagged > 0, "no gradient nodes");
    assert!(matches!(g.node(g.params["fc.weight"]).op, Op::Param { .. }));
    let t = text::print(&g);
    assert!(t.contains("grad(%"), "{t}");
    let parsed = text::parse(&t).unwrap();
    kiln::ir::verify(&parsed).unwrap();
    assert!(text::structurally_equal(&g, &parsed));
    // Building the graph runs nothing and accumulates nothing.
    assert!(w.grad().is_none());
    assert!(!loss.is_realized());
}

// ----- nn ---------------------------------------------------------------------------------------

#[test]
fn lenet_has_the_tutorials_parameter_count_and_shapes() {
    let net = kiln::nn::LeNet::new(&mut Generator::new(0));
    // conv1 6*1*9+6 = 60, conv2 16*6*9+16 = 880, fc1 576*120+120 = 69240,
    // fc2 120*84+84 = 10164, fc3 84*10+10 = 850.
    assert_eq!(net.num_parameters(), 81_194);
    let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "conv1.weight");
    assert_eq!(names[9], "fc3.bias");
    assert!(net
        .parameters()
        .iter()
        .all(|p| p.requires_grad() && p.is_leaf()));
    let x = Tensor::randn_with([1, 1, 32, 32], DType::F32, &mut Generator::new(1));
    let out = net.forward(&x);
    assert_eq!(out.shape(), &[1, 10]);
    // Linear init bound 1/sqrt(fan_in).
    let bound = 1.0 / (576.0f32).sqrt();
    assert!(f32s(&net.fc1.weight).iter().all(|v| v.abs() <= bound));
}

#[test]
fn reads_while_a_mutable_view_is_alive_are_errors_not_hangs() {
    let t = Tensor::ones([3]);
    let mut m = t.ndarray_mut::<f32>().unwrap();
    m.view_mut()[0] = 5.0;
    // Each of these would otherwise wait forever on the storage lock held by `m`.
    assert!(t.try_to_vec::<f32>().is_err());
    assert!(t.ndarray::<f32>().is_err());
    assert!(t.data_ptr().is_none());
    let lazy = &t + 1.0; // recording an op does not read the value...
    assert!(lazy.try_to_vec::<f32>().is_err()); // ...computing it does, and says why
    drop(m);
    assert_eq!(t.to_vec::<f32>(), vec![5.0, 1.0, 1.0]);
    assert_eq!(lazy.to_vec::<f32>(), vec![6.0, 2.0, 2.0]);
}
