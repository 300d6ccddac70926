//! The traced tensor handle.
//!
//! A [`Tensor`] is a node of a lazy expression DAG: its op (from the IR's [`Op`] set), its
//! operands, its type and the user's line that made it. Creating tensors from data gives
//! *realised* leaves; every op gives an unrealised node. Realisation (printing, [`Tensor::item`],
//! [`Tensor::to_vec`]) lowers the DAG below the requested tensors into a [`kiln_ir::Graph`]
//! (realised tensors become bound inputs) and executes it; [`Tensor::backward`] lowers the
//! same DAG, differentiates the graph symbolically and executes forward and backward as one
//! program.

use crate::error::{Error, Result};
use crate::random::{self, Generator};
use kiln_ir::{DType, Data, Literal, Loc, Op, TensorType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A realised value shared by a tensor and its detached aliases (`.detach()`, `.data()`), so
/// that an in-place update through one is seen through the others, as in PyTorch.
pub(crate) type Storage = Arc<RwLock<Option<Arc<Literal>>>>;

pub(crate) struct Inner {
    pub id: u64,
    pub op: Op,
    /// Operands; cleared once the tensor is realised if no gradient can flow through it.
    pub inputs: RwLock<Vec<Tensor>>,
    /// The values of the operands that were already realised when this node was recorded.
    /// Lowering binds these, not the operands' current values, so an in-place update made
    /// after this op was recorded does not change its result: eager semantics, lazily.
    pub snaps: RwLock<Vec<Option<Arc<Literal>>>>,
    pub ty: TensorType,
    pub loc: Loc,
    pub requires_grad: bool,
    /// What made the tensor, for `grad_fn` (the composite's name, e.g. `Mean`, else the op's).
    pub label: Option<&'static str>,
    pub storage: Storage,
    pub grad: Mutex<Option<Tensor>>,
    /// A name used for the tensor's input in lowered graphs (e.g. `conv1.weight`).
    pub name: Mutex<Option<String>>,
    /// For a lazy gradient (`autograd::grad`): its group and the index of its `wrt` tensor.
    /// Its `inputs` are the group's output, seed and `wrt` tensors, so lowering visits them
    /// first; lowering then differentiates the group once (see `lower.rs`).
    pub grad_src: Option<(Arc<GradGroup>, usize)>,
    /// For an op: the value it computed, kept apart from `storage` so that a later in-place
    /// write through an alias (`.detach()`, an ndarray view) does not change what the ops
    /// recorded before that write see — they read this; ops recorded after it snapshot the
    /// new value.
    pub computed: std::sync::OnceLock<Arc<Literal>>,
}

/// A request for the gradients of `output` (seeded with `seed`, or ones) with respect to `wrt`.
pub(crate) struct GradGroup {
    pub output: Tensor,
    pub seed: Option<Tensor>,
    pub wrt: Vec<Tensor>,
}

thread_local! {
    /// Storages this thread holds an `ndarray_mut` view of. Reading one would wait forever on
    /// its lock, so readers check here first and report a borrow error instead (like `RefCell`).
    static MUT_VIEWS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn storage_key(s: &Storage) -> usize {
    Arc::as_ptr(s) as usize
}

/// Marks a storage as mutably borrowed by this thread (until [`end_mut_view`]).
pub(crate) fn begin_mut_view(s: &Storage) {
    MUT_VIEWS.with(|v| v.borrow_mut().push(storage_key(s)));
}

pub(crate) fn end_mut_view(s: &Storage) {
    MUT_VIEWS.with(|v| {
        let mut v = v.borrow_mut();
        if let Some(i) = v.iter().position(|&k| k == storage_key(s)) {
            v.swap_remove(i);
        }
    });
}

/// The current value of a storage; an error if this thread holds a mutable view of it.
pub(crate) fn read_storage(s: &Storage) -> Result<Option<Arc<Literal>>> {
    if MUT_VIEWS.with(|v| v.borrow().contains(&storage_key(s))) {
        return Err(Error::Borrow(
            "a mutable ndarray view of this tensor is alive on this thread; drop it first".into(),
        ));
    }
    let v = s.read().unwrap_or_else(|p| p.into_inner()).clone();
    if v.is_none() {
        // A value on a GPU is copied to the host on first read (see `resident`).
        return crate::resident::fill_host(s);
    }
    Ok(v)
}

/// A tensor: a cheap, thread-safe handle (`Clone` shares it) to a node of the traced program.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

/// Rust element types that map to a [`DType`].
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn slice(d: &Data) -> Option<&[Self]>;
    fn slice_mut(d: &mut Data) -> Option<&mut [Self]>;
    fn into_data(v: Vec<Self>) -> Data;
    fn from_data(d: &Data) -> Vec<Self>;
}

macro_rules! element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            fn slice(d: &Data) -> Option<&[Self]> {
                match d {
                    Data::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut Data) -> Option<&mut [Self]> {
                match d {
                    Data::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn into_data(v: Vec<Self>) -> Data {
                Data::$dt(v)
            }
            fn from_data(d: &Data) -> Vec<Self> {
                match d.cast(DType::$dt) {
                    Data::$dt(v) => v,
                    _ => unreachable!("Data::cast returns the requested dtype"),
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(i64, I64);
element!(bool, Bool);

impl Tensor {
    // ----- construction ---------------------------------------------------------------------

    /// A node of the traced program. `requires_grad` follows PyTorch: true when any operand
    /// requires grad, grad mode is on and the result is a float (masks and indices never
    /// require grad).
    pub(crate) fn from_op(
        op: Op,
        inputs: Vec<Tensor>,
        ty: TensorType,
        loc: Loc,
        label: Option<&'static str>,
    ) -> Tensor {
        let requires_grad = ty.dtype.is_float()
            && crate::autograd::is_grad_enabled()
            && inputs.iter().any(|t| t.requires_grad());
        let snaps = inputs
            .iter()
            .map(|t| read_storage(&t.0.storage).ok().flatten())
            .collect();
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            op,
            inputs: RwLock::new(inputs),
            snaps: RwLock::new(snaps),
            ty,
            loc,
            requires_grad,
            label,
            storage: Arc::new(RwLock::new(None)),
            grad: Mutex::new(None),
            name: Mutex::new(None),
            grad_src: None,
            computed: std::sync::OnceLock::new(),
        }))
    }

    /// A lazy gradient: element `index` of `group`'s gradients.
    pub(crate) fn grad_node(group: &Arc<GradGroup>, index: usize, loc: Loc) -> Tensor {
        let w = &group.wrt[index];
        let ty = w.ty().clone();
        let mut inputs = vec![group.output.clone()];
        inputs.extend(group.seed.clone());
        inputs.extend(group.wrt.iter().cloned());
        let snaps = inputs
            .iter()
            .map(|t| read_storage(&t.0.storage).ok().flatten())
            .collect();
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            op: Op::Detach,
            inputs: RwLock::new(inputs),
            snaps: RwLock::new(snaps),
            ty,
            loc,
            requires_grad: false,
            label: Some("Grad"),
            storage: Arc::new(RwLock::new(None)),
            grad: Mutex::new(None),
            name: Mutex::new(None),
            grad_src: Some((group.clone(), index)),
            computed: std::sync::OnceLock::new(),
        }))
    }

    /// A data source without a value: an input of a compiled step, bound at each run.
    pub(crate) fn placeholder(ty: TensorType, loc: Loc) -> Tensor {
        Tensor::leaf_with_storage(Arc::new(RwLock::new(None)), ty, false, loc)
    }

    /// A realised leaf holding `lit`.
    pub(crate) fn leaf(lit: Literal, requires_grad: bool, loc: Loc) -> Tensor {
        let ty = lit.ty();
        Tensor::leaf_with_storage(
            Arc::new(RwLock::new(Some(Arc::new(lit)))),
            ty,
            requires_grad,
            loc,
        )
    }

    pub(crate) fn leaf_with_storage(
        storage: Storage,
        ty: TensorType,
        requires_grad: bool,
        loc: Loc,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            op: Op::Input {
                name: String::new(),
                ty: ty.clone(),
            },
            inputs: RwLock::new(Vec::new()),
            snaps: RwLock::new(Vec::new()),
            ty,
            loc,
            requires_grad,
            label: None,
            storage,
            grad: Mutex::new(None),
            name: Mutex::new(None),
            grad_src: None,
            computed: std::sync::OnceLock::new(),
        }))
    }

    /// A tensor from a literal (shape and data), realised on the CPU.
    #[track_caller]
    pub fn from_literal(lit: Literal) -> Tensor {
        Tensor::leaf(lit, false, Loc::caller())
    }

    /// A tensor of the given shape from a vector in row-major order.
    #[track_caller]
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Vec<usize>>) -> Tensor {
        Tensor::try_from_vec(data, shape).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    pub fn try_from_vec<T: Element>(data: Vec<T>, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        let lit = match Literal::new(shape, T::into_data(data)) {
            Ok(lit) => lit,
            Err(m) => return Err(Error::shape("from_vec", m)),
        };
        Ok(Tensor::leaf(lit, false, Loc::caller()))
    }

    /// A 1-D tensor copied from a slice.
    #[track_caller]
    pub fn from_slice<T: Element>(data: &[T]) -> Tensor {
        Tensor::from_vec(data.to_vec(), [data.len()])
    }

    /// A 0-d tensor.
    #[track_caller]
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor::from_vec(vec![v], [])
    }

    /// A tensor of `dtype` filled with `value` (`torch.full`).
    #[track_caller]
    pub fn full(shape: impl Into<Vec<usize>>, value: f64, dtype: DType) -> Tensor {
        Tensor::from_literal(Literal::splat(&TensorType::new(dtype, shape), value))
    }

    /// f32 zeros (`torch.zeros`).
    #[track_caller]
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        Tensor::full(shape, 0.0, DType::F32)
    }

    /// f32 ones (`torch.ones`).
    #[track_caller]
    pub fn ones(shape: impl Into<Vec<usize>>) -> Tensor {
        Tensor::full(shape, 1.0, DType::F32)
    }

    #[track_caller]
    pub fn zeros_like(&self) -> Tensor {
        Tensor::full(self.shape().to_vec(), 0.0, self.dtype())
    }

    #[track_caller]
    pub fn ones_like(&self) -> Tensor {
        Tensor::full(self.shape().to_vec(), 1.0, self.dtype())
    }

    #[track_caller]
    pub fn full_like(&self, value: f64) -> Tensor {
        Tensor::full(self.shape().to_vec(), value, self.dtype())
    }

    /// `start, start+step, ...` below `end` (`torch.arange`), as f32 unless `dtype` says
    /// otherwise.
    #[track_caller]
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Tensor {
        assert!(step != 0.0, "arange: step must be nonzero");
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let vals: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_literal(Literal::from_f64([n], dtype, &vals))
    }

    /// Uniform samples in [0, 1) from `generator` (`torch.rand(..., generator=g)`).
    #[track_caller]
    pub fn rand_with(
        shape: impl Into<Vec<usize>>,
        dtype: DType,
        generator: &mut Generator,
    ) -> Tensor {
        let shape = shape.into();
        let n = kiln_ir::shape::numel(&shape);
        let data = match dtype {
            DType::F64 => Data::F64((0..n).map(|_| generator.uniform_f64()).collect()),
            _ => Data::F32((0..n).map(|_| generator.uniform_f32()).collect()).cast(dtype),
        };
        Tensor::leaf(Literal { shape, data }, false, Loc::caller())
    }

    /// Standard normal samples from `generator` (`torch.randn(..., generator=g)`).
    #[track_caller]
    pub fn randn_with(
        shape: impl Into<Vec<usize>>,
        dtype: DType,
        generator: &mut Generator,
    ) -> Tensor {
        let shape = shape.into();
        let n = kiln_ir::shape::numel(&shape);
        let vals: Vec<f64> = (0..n).map(|_| generator.normal()).collect();
        Tensor::leaf(Literal::from_f64(shape, dtype, &vals), false, Loc::caller())
    }

    /// f32 uniform samples in [0, 1) from this thread's default generator (see
    /// [`crate::manual_seed`]).
    #[track_caller]
    pub fn rand(shape: impl Into<Vec<usize>>) -> Tensor {
        let loc = Loc::caller();
        let t = random::with_default(|g| Tensor::rand_with(shape, DType::F32, g));
        t.relocated(loc)
    }

    /// f32 standard normal samples from this thread's default generator.
    #[track_caller]
    pub fn randn(shape: impl Into<Vec<usize>>) -> Tensor {
        let loc = Loc::caller();
        let t = random::with_default(|g| Tensor::randn_with(shape, DType::F32, g));
        t.relocated(loc)
    }

    /// Integers uniform in `[low, high)` as i64 (`torch.randint`).
    #[track_caller]
    pub fn randint_with(
        low: i64,
        high: i64,
        shape: impl Into<Vec<usize>>,
        generator: &mut Generator,
    ) -> Tensor {
        assert!(high > low, "randint: empty range {low}..{high}");
        let shape = shape.into();
        let n = kiln_ir::shape::numel(&shape);
        let v: Vec<i64> = (0..n)
            .map(|_| low + generator.below((high - low) as u64) as i64)
            .collect();
        Tensor::leaf(
            Literal {
                shape,
                data: Data::I64(v),
            },
            false,
            Loc::caller(),
        )
    }

    fn relocated(self, loc: Loc) -> Tensor {
        let lit = self.literal().expect("fresh random tensors are realised");
        Tensor::leaf(Arc::unwrap_or_clone(lit), false, loc)
    }

    // ----- properties -----------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        &self.0.ty.shape
    }

    /// Size of axis `dim` (negative counts from the end).
    #[track_caller]
    pub fn size(&self, dim: isize) -> usize {
        if self.ndim() == 0 {
            panic!("{}", Error::shape("size", "a 0-d tensor has no dimensions"));
        }
        let d = crate::ops::norm_dim(dim, self.ndim()).unwrap_or_else(|e| panic!("{e}"));
        self.shape()[d]
    }

    pub fn ndim(&self) -> usize {
        self.0.ty.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.0.ty.numel()
    }

    pub fn dtype(&self) -> DType {
        self.0.ty.dtype
    }

    pub fn ty(&self) -> &TensorType {
        &self.0.ty
    }

    /// Where the tensor's value lives: a GPU for tensors moved there ([`Tensor::to_device`],
    /// [`crate::nn::Module::to_device`]) or written there by a compiled step running on the GPU;
    /// the CPU otherwise (unrealised ops included).
    pub fn device(&self) -> crate::Device {
        crate::resident::device_of(&self.0.storage)
    }

    /// The line of the user's program that created this tensor.
    pub fn loc(&self) -> &Loc {
        &self.0.loc
    }

    /// A unique id (stable for the tensor's lifetime).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The IR op that computes this tensor (`input` for a leaf).
    pub fn op(&self) -> &Op {
        &self.0.op
    }

    /// Whether this is a leaf in PyTorch's sense: made from data, or without gradient history.
    /// Gradients are accumulated into leaves that require grad.
    pub fn is_leaf(&self) -> bool {
        self.is_source() || !self.requires_grad()
    }

    /// Whether the tensor is a data source (holds a value and no op), as opposed to a traced op.
    pub(crate) fn is_source(&self) -> bool {
        matches!(self.0.op, Op::Input { .. })
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether the value has been computed.
    pub fn is_realized(&self) -> bool {
        // A storage under a mutable view was realised before the view was taken.
        read_storage(&self.0.storage)
            .map(|v| v.is_some())
            .unwrap_or(true)
    }

    /// Names the tensor; lowered graphs and IR dumps use the name for its input.
    pub fn set_name(&self, name: impl Into<String>) {
        *self.0.name.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.into());
    }

    pub fn name(&self) -> Option<String> {
        self.0
            .name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn inputs(&self) -> Vec<Tensor> {
        self.0
            .inputs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Operand values captured when this node was recorded (see `Inner::snaps`).
    pub(crate) fn snapshots(&self) -> Vec<Option<Arc<Literal>>> {
        self.0
            .snaps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// PyTorch's `grad_fn` name (`AddBackward0`, `MeanBackward0`, ...), `None` for tensors
    /// that do not require grad and for leaves.
    pub fn grad_fn(&self) -> Option<String> {
        if !self.requires_grad() || self.is_source() {
            return None;
        }
        let base = match self.0.label {
            Some(l) => l.to_string(),
            None => {
                let n = self.0.op.name();
                let mut c = n.chars();
                match c.next() {
                    Some(f) => f
                        .to_uppercase()
                        .chain(c)
                        .collect::<String>()
                        .replace('_', ""),
                    None => String::new(),
                }
            }
        };
        Some(format!("{base}Backward0"))
    }

    /// The realised value (realising it first).
    pub fn literal(&self) -> Result<Arc<Literal>> {
        self.realize()?;
        Ok(read_storage(&self.0.storage)?.expect("realize() stores a value"))
    }

    /// Computes the value if it is not yet computed.
    pub fn realize(&self) -> Result<()> {
        if self.is_realized() {
            return Ok(());
        }
        crate::lower::realize(std::slice::from_ref(self))
    }

    /// The single value of a one-element tensor, as f64 (`.item()`).
    #[track_caller]
    pub fn item(&self) -> f64 {
        self.try_item().unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    pub fn try_item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!(
                    "only one-element tensors can be converted to a scalar, got shape {:?}",
                    self.shape()
                ),
            ));
        }
        Ok(self.literal()?.data.get_f64(0))
    }

    /// The values in row-major order, converted to `T`.
    #[track_caller]
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        self.try_to_vec().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let lit = self.literal()?;
        Ok(match T::slice(&lit.data) {
            Some(s) => s.to_vec(),
            None => T::from_data(&lit.data),
        })
    }

    /// The tensor on `device` (`.to(device)`): itself if it is there already, else a new leaf
    /// holding a copy of its value there (with the same `requires_grad`; gradients do not flow
    /// back through the copy — move a module's parameters in place with
    /// [`crate::nn::Module::to_device`]). An error for a device this build or machine cannot
    /// use. A GPU tensor's value is copied to the host when something reads it there (printing,
    /// `to_vec`, `item`, an eager op); programs of a compiled step running on the GPU
    /// (`KILN_BACKEND=cuda`) use it in place.
    #[track_caller]
    pub fn to_device(&self, device: crate::Device) -> Result<Tensor> {
        let device = device.check()?;
        if self.device() == device {
            return Ok(self.clone());
        }
        let loc = Loc::caller();
        let lit = self.literal()?;
        let t = Tensor::leaf_with_storage(
            Arc::new(RwLock::new(Some(lit))),
            self.ty().clone(),
            self.requires_grad(),
            loc,
        );
        crate::resident::move_cell(&t.0.storage, device)?;
        Ok(t)
    }

    /// Moves this tensor's value to `device` in place: the tensor, its aliases and whoever
    /// holds it (an optimiser) follow.
    pub(crate) fn move_storage_to(&self, device: crate::Device) -> Result<()> {
        let device = device.check()?;
        self.realize()?;
        crate::resident::move_cell(&self.0.storage, device)
    }
}
