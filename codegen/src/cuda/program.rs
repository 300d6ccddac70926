//! Programs on the GPU (feature `cuda`): the CPU program's schedule, kernels and buffer plan,
//! with every kernel printed as PTX and launched through the runtime.
//!
//! [`CudaProgram::compile`] compiles (or takes from the program cache) the CPU [`Program`] of
//! the graph — canonicalisation, graph passes, schedule, kernel IR, the liveness plan of
//! buffers — then emits each kernel with [`ptx::emit`] for the device's target, loads it
//! through the module cache, and uploads the program's constants once (they stay resident).
//! GPU programs are cached per device and CPU program, as CPU programs are by structure.
//!
//! [`CudaProgram::run`] checks the bindings as the CPU program does, copies the inputs to
//! device buffers, takes the temporaries of the memory plan and the (zeroed) outputs from the
//! caching allocator, launches the kernels in order on the device's stream, and copies the
//! wanted values back.

use super::ptx::{self, PtxKernel};
use super::runtime::{self, Buffer, Device, Function};
use crate::memory::Storage;
use crate::program::{Compiled, Program};
use kiln_ir::shape::numel;
use kiln_ir::{DType, Data, Graph, IrError, Literal, NodeId, Result, TensorType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Beyond this many GPU programs the cache starts over.
const MAX_PROGRAMS: usize = 512;

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

/// The device ordinal [`crate::execute`] uses with `KILN_BACKEND=cuda`: `KILN_CUDA_DEVICE`
/// (default 0).
pub fn default_ordinal() -> u32 {
    std::env::var("KILN_CUDA_DEVICE")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One kernel launch of a GPU program.
struct Launch {
    func: Function,
    grid: u32,
    block: u32,
    shared_bytes: u32,
    /// Bytes each parameter's buffer must hold (`len * size_of(dtype)`).
    need: Vec<usize>,
}

/// A CPU program's kernels loaded on one device.
struct GpuCompiled {
    /// Keeps the CPU program (and so the cache key, its address) alive.
    compiled: Arc<Compiled>,
    device: Arc<Device>,
    launches: Vec<Launch>,
    ptx: Vec<PtxKernel>,
    /// The program's constants, uploaded once.
    consts: Vec<Buffer>,
}

/// A graph compiled for a CUDA device, ready to run with new bindings (`Send + Sync`).
#[derive(Clone)]
pub struct CudaProgram {
    program: Program,
    gpu: Arc<GpuCompiled>,
}

/// Hits and misses of the GPU program cache.
pub fn cache_stats() -> crate::CacheStats {
    crate::CacheStats {
        hits: HITS.load(Ordering::Relaxed),
        misses: MISSES.load(Ordering::Relaxed),
    }
}

type Cache = Mutex<HashMap<(u32, usize), Arc<GpuCompiled>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn gpu(e: runtime::Error) -> IrError {
    IrError::Eval(format!("cuda: {e}"))
}

/// Element types whose values are plain bytes.
///
/// # Safety
///
/// Implementors have no padding and every bit pattern of their size is a valid value, so a
/// slice of them may be viewed, and written, as bytes.
unsafe trait Plain: Copy {}
// SAFETY: IEEE floats and two's-complement integers: no padding, every bit pattern valid.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: as above.
unsafe impl Plain for u8 {}

fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so all `size_of_val(v)` bytes are initialised; u8 has
    // alignment 1; the shared borrow keeps the slice alive and unchanged while the view lives.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Plain>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`, and any bytes written through the view form valid `T`s
    // (`T: Plain`); the mutable borrow makes the view the only access while it lives.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The bytes of a value as stored on the device (bools as one byte, 0 or 1).
fn bytes_of(d: &Data) -> std::borrow::Cow<'_, [u8]> {
    match d {
        Data::F32(v) => as_bytes(v).into(),
        Data::F64(v) => as_bytes(v).into(),
        Data::I64(v) => as_bytes(v).into(),
        Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>().into(),
    }
}

/// `n` elements of `dtype` copied from the start of `buf`.
fn download(buf: &Buffer, dtype: DType, n: usize) -> std::result::Result<Data, runtime::Error> {
    fn fill<T: Plain>(
        buf: &Buffer,
        zero: T,
        n: usize,
    ) -> std::result::Result<Vec<T>, runtime::Error> {
        let mut v = vec![zero; n];
        buf.download(as_bytes_mut(&mut v))?;
        Ok(v)
    }
    Ok(match dtype {
        DType::F32 => Data::F32(fill(buf, 0f32, n)?),
        DType::F64 => Data::F64(fill(buf, 0f64, n)?),
        DType::I64 => Data::I64(fill(buf, 0i64, n)?),
        DType::Bool => Data::Bool(fill(buf, 0u8, n)?.into_iter().map(|b| b != 0).collect()),
    })
}

/// Synchronises the device's stream when dropped, so that no enqueued copy reads host memory
/// after the run that borrowed it has returned, on any path.
struct SyncOnDrop<'a>(&'a Device);

impl Drop for SyncOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.synchronize() {
            log::warn!("cuda:{}: synchronising after a run: {e}", self.0.ordinal());
        }
    }
}

fn build(compiled: &Arc<Compiled>, device: &Arc<Device>) -> Result<GpuCompiled> {
    let target = device.target();
    let mut launches = Vec::with_capacity(compiled.steps.len());
    let mut ptxs = Vec::with_capacity(compiled.steps.len());
    for step in &compiled.steps {
        let k = ptx::emit(&step.kernel, target).map_err(|e| gpu(e.into()))?;
        if k.launch.0 == 0 || k.launch.1 == 0 {
            return Err(gpu(runtime::Error::Invalid(format!(
                "{}: empty launch {:?}",
                k.entry, k.launch
            ))));
        }
        let func = device.function(&k.text, &k.entry).map_err(gpu)?;
        let need = step
            .kernel
            .params
            .iter()
            .map(|p| p.len as usize * p.dtype.size_of())
            .collect();
        launches.push(Launch {
            func,
            grid: k.launch.0,
            block: k.launch.1,
            shared_bytes: k.shared_bytes,
            need,
        });
        ptxs.push(k);
    }
    let consts = compiled
        .consts
        .iter()
        .map(|c| {
            let bytes = bytes_of(&c.data);
            let b = device.alloc(bytes.len())?;
            b.upload(&bytes)?;
            Ok(b)
        })
        .collect::<std::result::Result<Vec<_>, runtime::Error>>()
        .map_err(gpu)?;
    if crate::dump::DumpFlags::from_env().kernels {
        let text: Vec<&str> = ptxs.iter().map(|k| k.text.as_str()).collect();
        crate::dump::write(&compiled.id, "ptx", &text.join("\n"));
    }
    log::debug!(
        "program {} on cuda:{}: {} kernels ({} modules loaded on the device)",
        compiled.id,
        device.ordinal(),
        launches.len(),
        device.modules_loaded()
    );
    Ok(GpuCompiled {
        compiled: compiled.clone(),
        device: device.clone(),
        launches,
        ptx: ptxs,
        consts,
    })
}

impl CudaProgram {
    /// Compiles the nodes `wanted` of `graph` for device `cuda:{ordinal}`, the nodes `bound`
    /// being given at run time (the contract of [`Program::compile`]).
    pub fn compile(
        graph: &Graph,
        wanted: &[NodeId],
        bound: &[NodeId],
        ordinal: u32,
    ) -> Result<CudaProgram> {
        let device = runtime::device(ordinal).map_err(gpu)?;
        let program = Program::compile(graph, wanted, bound)?;
        let compiled = program.compiled().clone();
        let key = (ordinal, Arc::as_ptr(&compiled) as usize);
        let hit = cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let gpu = match hit {
            Some(g) => {
                HITS.fetch_add(1, Ordering::Relaxed);
                g
            }
            None => {
                MISSES.fetch_add(1, Ordering::Relaxed);
                // Built outside the lock: module loads JIT-compile PTX.
                let g = Arc::new(build(&compiled, &device)?);
                let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
                if map.len() >= MAX_PROGRAMS {
                    log::debug!("GPU program cache full ({MAX_PROGRAMS}): starting over");
                    map.clear();
                }
                // The key's address stays valid while the entry holds `compiled`.
                map.entry(key).or_insert(g).clone()
            }
        };
        Ok(CudaProgram { program, gpu })
    }

    /// The device the program runs on.
    pub fn device(&self) -> &Arc<Device> {
        &self.gpu.device
    }

    /// The CPU program it was made from (schedule, kernel IR, buffer plan).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The PTX of every kernel, in launch order.
    pub fn ptx(&self) -> impl Iterator<Item = &PtxKernel> {
        self.gpu.ptx.iter()
    }

    /// Runs the program: the values of the wanted nodes, in the order asked. Inputs are
    /// copied to the device and results back.
    pub fn run(&self, bindings: &HashMap<NodeId, &Literal>) -> Result<Vec<Literal>> {
        let inputs = self.program.inputs(bindings)?;
        self.run_host(&inputs).map_err(gpu)
    }

    /// Runs the program on values that may already be on the device, leaving the results
    /// there: device inputs are used in place (no copy), host inputs are uploaded, and no
    /// result is downloaded. A training step that feeds its updated parameters back in keeps
    /// them resident; only host inputs (the batch) cross the bus. Returns after the device
    /// finished the run.
    pub fn run_device(&self, bindings: &HashMap<NodeId, Value<'_>>) -> Result<Vec<DeviceTensor>> {
        let inputs = self.device_inputs(bindings)?;
        self.run_values(&inputs).map_err(gpu)
    }

    /// The bindings of the program's inputs in storage order, checked as
    /// [`Program::run`] checks host bindings (types, sizes, declared nodes), and device values
    /// for being on this program's device.
    fn device_inputs<'a>(&self, bindings: &HashMap<NodeId, Value<'a>>) -> Result<Vec<Value<'a>>> {
        let check = |id: NodeId, v: &Value<'_>, ty: &TensorType| -> Result<()> {
            let (got, ok) = match v {
                Value::Host(l) => (l.ty(), l.data.len() == numel(&l.shape)),
                Value::Device(d) => (
                    d.ty.clone(),
                    d.buf.bytes() >= d.ty.numel() * d.ty.dtype.size_of(),
                ),
            };
            if got != *ty || !ok {
                return Err(IrError::Eval(format!(
                    "%{} has type {ty} but is bound to a value of type {got}{}",
                    id.index(),
                    if ok { "" } else { " of the wrong size" }
                )));
            }
            if let Value::Device(d) = v {
                if d.device().ordinal() != self.gpu.device.ordinal() {
                    return Err(IrError::Eval(format!(
                        "%{} is bound to a value on cuda:{}, the program runs on cuda:{}",
                        id.index(),
                        d.device().ordinal(),
                        self.gpu.device.ordinal()
                    )));
                }
            }
            Ok(())
        };
        let mut sorted: Vec<(&NodeId, &Value<'a>)> = bindings.iter().collect();
        sorted.sort_by_key(|(id, _)| **id);
        for (&id, v) in sorted {
            if let Some(ty) = self.program.unused_bound.get(&id) {
                check(id, v, ty)?;
            } else if !self.program.input_nodes.contains(&id) {
                return Err(IrError::Eval(format!(
                    "%{} is bound but was not declared bound when the program was compiled",
                    id.index()
                )));
            }
        }
        self.program
            .input_nodes
            .iter()
            .zip(&self.gpu.compiled.input_types)
            .map(|(id, ty)| {
                let v = bindings.get(id).ok_or_else(|| {
                    IrError::Eval(format!("%{} of type {ty} is not bound", id.index()))
                })?;
                check(*id, v, ty)?;
                Ok(*v)
            })
            .collect()
    }

    /// Allocates the temporaries and the zeroed outputs and enqueues every kernel, reading
    /// the input storages from `inputs`.
    fn launch_all(&self, inputs: &[&Buffer]) -> std::result::Result<Ran, runtime::Error> {
        let g = &*self.gpu;
        let c = &*g.compiled;
        let dev = &g.device;
        let temps = c
            .mem
            .temps
            .iter()
            .map(|&bytes| dev.alloc(bytes))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut outputs = Vec::with_capacity(c.output_types.len());
        for t in &c.output_types {
            let b = dev.alloc(t.numel() * t.dtype.size_of())?;
            b.zero_async()?;
            outputs.push(b);
        }
        for (step, l) in c.steps.iter().zip(&g.launches) {
            let mut args: Vec<&Buffer> = Vec::with_capacity(step.args.len());
            for (i, &a) in step.args.iter().enumerate() {
                let b = match c.mem.storage[a] {
                    Some(Storage::Input(k)) => inputs[k],
                    Some(Storage::Const(k)) => &g.consts[k],
                    Some(Storage::Temp(k)) => &temps[k],
                    Some(Storage::Output(k)) => &outputs[k],
                    None => {
                        return Err(runtime::Error::Invalid(format!(
                            "{}: node {a} has no storage",
                            l.func.entry()
                        )))
                    }
                };
                if b.bytes() < l.need[i] {
                    return Err(runtime::Error::Invalid(format!(
                        "{}: parameter {i} needs {} bytes, its buffer has {}",
                        l.func.entry(),
                        l.need[i],
                        b.bytes()
                    )));
                }
                args.push(b);
            }
            if args.len() != step.kernel.params.len() {
                return Err(runtime::Error::Invalid(format!(
                    "{}: {} buffers for {} parameters",
                    l.func.entry(),
                    args.len(),
                    step.kernel.params.len()
                )));
            }
            // SAFETY: the PTX was emitted by `ptx::emit` from `step.kernel`, which declares one
            // `.param .u64` per kernel parameter, in the order of `step.kernel.params` (and so
            // of `step.args`, which the CPU program passes the same way). Its accesses stay
            // within each parameter's `len` elements: the kernel IR was verified when the CPU
            // program was compiled (`kernel::verify`: every store and unguarded load provably
            // in bounds, guarded loads clamped), and a contraction's loop nest written by
            // `cuda::contract` guards every load that could leave its buffer (checked on the
            // bounds-checked kernel interpreter by codegen/tests/ptx.rs). Each buffer was just
            // checked to hold `len * size_of(dtype)` bytes. Buffers dropped after this are
            // only reused by work enqueued later on the same stream.
            unsafe { dev.launch(&l.func, l.grid, l.block, l.shared_bytes, &args)? };
        }
        Ok(Ran { temps, outputs })
    }

    fn run_host(&self, inputs: &[&Literal]) -> std::result::Result<Vec<Literal>, runtime::Error> {
        let g = &*self.gpu;
        let c = &*g.compiled;
        let dev = &g.device;
        dev.bind()?;
        // From here on, every return synchronises the stream first (the uploads below read
        // `inputs`, which the caller keeps borrowed only until we return).
        let _sync = SyncOnDrop(dev);
        let mut input_bufs = Vec::with_capacity(inputs.len());
        for lit in inputs {
            // SAFETY: `lit` is borrowed by the caller until this function returns, and `_sync`
            // synchronises the stream before that.
            input_bufs.push(unsafe { upload_borrowed(dev, lit)? });
        }
        let refs: Vec<&Buffer> = input_bufs.iter().collect();
        let ran = self.launch_all(&refs)?;
        // The wanted values: each owner's buffer downloaded once.
        let mut got: HashMap<usize, Data> = HashMap::new();
        let mut res = Vec::with_capacity(c.results.len());
        for (ty, owner) in &c.results {
            let data = match c.mem.storage[*owner] {
                Some(Storage::Input(k)) => inputs[k].data.clone(),
                Some(Storage::Const(k)) => c.consts[k].data.clone(),
                Some(st @ (Storage::Temp(_) | Storage::Output(_))) => match got.get(owner) {
                    Some(d) => d.clone(),
                    None => {
                        let oty = &c.owner_types[owner];
                        let d = download(ran.buffer(st), oty.dtype, oty.numel())?;
                        got.insert(*owner, d.clone());
                        d
                    }
                },
                None => return Err(runtime::Error::Invalid("a result has no value".into())),
            };
            res.push(Literal {
                shape: ty.shape.clone(),
                data,
            });
        }
        Ok(res)
    }

    fn run_values(
        &self,
        inputs: &[Value<'_>],
    ) -> std::result::Result<Vec<DeviceTensor>, runtime::Error> {
        let g = &*self.gpu;
        let c = &*g.compiled;
        let dev = &g.device;
        dev.bind()?;
        let _sync = SyncOnDrop(dev);
        let mut uploaded: Vec<Option<Buffer>> = Vec::with_capacity(inputs.len());
        for v in inputs {
            uploaded.push(match v {
                // SAFETY: as in `run_host`: borrowed until we return, `_sync` waits first.
                Value::Host(lit) => Some(unsafe { upload_borrowed(dev, lit)? }),
                Value::Device(_) => None,
            });
        }
        let refs: Vec<&Buffer> = inputs
            .iter()
            .zip(&uploaded)
            .map(|(v, u)| match (v, u) {
                (Value::Device(d), _) => &*d.buf,
                (_, Some(b)) => b,
                (Value::Host(_), None) => unreachable!("host inputs were uploaded"),
            })
            .collect();
        let ran = self.launch_all(&refs)?;
        drop(refs);
        let mut temps: Vec<Option<Buffer>> = ran.temps.into_iter().map(Some).collect();
        let mut outputs: Vec<Option<Buffer>> = ran.outputs.into_iter().map(Some).collect();
        let mut uploaded = uploaded;
        // Each owner's buffer becomes one shared device value (no copy).
        let mut held: HashMap<usize, Arc<Buffer>> = HashMap::new();
        let mut res = Vec::with_capacity(c.results.len());
        for (ty, owner) in &c.results {
            let buf = match held.get(owner) {
                Some(b) => b.clone(),
                None => {
                    let b = match c.mem.storage[*owner] {
                        Some(Storage::Input(k)) => match (&inputs[k], uploaded[k].take()) {
                            (Value::Device(d), _) => d.buf.clone(),
                            (Value::Host(_), Some(b)) => Arc::new(b),
                            (Value::Host(lit), None) => DeviceTensor::upload(dev, lit)?.buf,
                        },
                        Some(Storage::Const(k)) => DeviceTensor::upload(dev, &c.consts[k])?.buf,
                        Some(Storage::Temp(k)) => Arc::new(take(&mut temps[k])?),
                        Some(Storage::Output(k)) => Arc::new(take(&mut outputs[k])?),
                        None => {
                            return Err(runtime::Error::Invalid("a result has no value".into()))
                        }
                    };
                    held.insert(*owner, b.clone());
                    b
                }
            };
            res.push(DeviceTensor {
                ty: ty.clone(),
                buf,
            });
        }
        Ok(res)
    }
}

/// What [`CudaProgram::launch_all`] allocated: the temporaries and outputs of one run.
struct Ran {
    temps: Vec<Buffer>,
    outputs: Vec<Buffer>,
}

impl Ran {
    fn buffer(&self, st: Storage) -> &Buffer {
        match st {
            Storage::Temp(k) => &self.temps[k],
            Storage::Output(k) => &self.outputs[k],
            _ => unreachable!("only temporaries and outputs are allocated per run"),
        }
    }
}

fn take(b: &mut Option<Buffer>) -> std::result::Result<Buffer, runtime::Error> {
    b.take()
        .ok_or_else(|| runtime::Error::Invalid("a buffer was handed out twice".into()))
}

/// A device buffer holding `lit`, its upload enqueued (bools, converted, are waited for).
///
/// # Safety
///
/// `lit` must stay alive and unchanged until the device's stream is synchronised.
unsafe fn upload_borrowed(
    dev: &Arc<Device>,
    lit: &Literal,
) -> std::result::Result<Buffer, runtime::Error> {
    let bytes = bytes_of(&lit.data);
    let b = dev.alloc(bytes.len())?;
    match bytes {
        // SAFETY: `host` borrows `lit`, which the caller keeps alive until the stream is
        // synchronised.
        std::borrow::Cow::Borrowed(host) => unsafe { b.upload_async(host)? },
        // A converted copy is dropped when we return: wait for its upload.
        std::borrow::Cow::Owned(host) => b.upload(&host)?,
    }
    Ok(b)
}

/// A binding of [`CudaProgram::run_device`]: a host value (uploaded for the run) or a value
/// already on the device.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Host(&'a Literal),
    Device(&'a DeviceTensor),
}

/// A tensor on a device: a buffer of the caching allocator and the type of what it holds.
/// Cloning shares the buffer; it returns to the allocator when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    ty: TensorType,
    buf: Arc<Buffer>,
}

impl DeviceTensor {
    /// `lit` copied to `device`.
    pub fn upload(
        device: &Arc<Device>,
        lit: &Literal,
    ) -> std::result::Result<Self, runtime::Error> {
        let bytes = bytes_of(&lit.data);
        let buf = device.alloc(bytes.len())?;
        buf.upload(&bytes)?;
        Ok(DeviceTensor {
            ty: lit.ty(),
            buf: Arc::new(buf),
        })
    }

    /// The value copied to the host (after the work enqueued before on its stream).
    pub fn to_literal(&self) -> std::result::Result<Literal, runtime::Error> {
        Ok(Literal {
            shape: self.ty.shape.clone(),
            data: download(&self.buf, self.ty.dtype, self.ty.numel())?,
        })
    }

    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    pub fn device(&self) -> &Arc<Device> {
        self.buf.device()
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
}
