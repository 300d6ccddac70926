//! The CPU backend: Cranelift JIT for loop-nest kernels, library calls for contractions.
//!
//! [`compile`] turns the loop-nest kernels of a program into machine code, one function per
//! kernel in one `JITModule` (the program's [`Code`]); [`launch`] runs them. The target is the
//! host (`cranelift_native`), so the available vector extensions (SSE4.1, AVX, FMA) are used.

pub mod emit;
pub mod launch;
pub mod math;
pub mod naive;
pub mod runtime;

use crate::kernel::{Body, Kernel};
use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::HashMap;

/// The address of a compiled kernel: `extern "C" fn(*const *mut u8, i64, i64)`.
#[derive(Clone, Copy, Debug)]
pub struct KernelFn(pub(crate) *const u8);

// SAFETY: the address points to immutable, finalised machine code owned by a `Code` that the
// program holding this `KernelFn` also holds; calling it from any thread is as safe as from
// one (see `launch::run_kernel`).
unsafe impl Send for KernelFn {}
unsafe impl Sync for KernelFn {}

/// The machine code of a program's kernels.
pub struct Code {
    module: Option<JITModule>,
}

// SAFETY: `JITModule` is neither `Send` nor `Sync` because it holds raw pointers and a
// `RefCell` used while compiling. A `Code` is built only after `finalize_definitions`; from
// then on nothing calls any method on the module (the kernels' addresses were read before),
// so no shared state is touched from several threads. The only use left is `Drop`, which has
// exclusive access.
unsafe impl Send for Code {}
unsafe impl Sync for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the program that owns this `Code` is being dropped, and with it every
            // `KernelFn` into this module (they are only stored next to it, in the same
            // `Compiled`), so no code in this memory can run again.
            unsafe { m.free_memory() };
        }
    }
}

/// What compiling a program's kernels produced.
pub struct Compiled {
    pub code: Code,
    /// One entry per kernel; `None` for contraction calls.
    pub fns: Vec<Option<KernelFn>>,
    /// The Cranelift IR of each kernel (if asked for; before optimisation).
    pub clif: Vec<String>,
    /// The machine code of each loop-nest kernel, disassembled (if asked for).
    pub asm: Vec<String>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("Cranelift {what}: {e}")
}

/// Whether `KILN_JIT_MATH=extern` asks for libm calls instead of the inline polynomials.
pub fn extern_math() -> bool {
    std::env::var("KILN_JIT_MATH").is_ok_and(|v| v == "extern")
}

/// Compiles the loop-nest kernels of a program.
pub fn compile(kernels: &[&Kernel], want_clif: bool, want_asm: bool) -> Result<Compiled, String> {
    let mut flags = settings::builder();
    let set =
        |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| err("settings", e));
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    // Always verify the generated IR: a malformed function is an error, never miscompiled.
    set(&mut flags, "enable_verifier", "true")?;
    let isa = cranelift_native::builder()
        .map_err(|e| err("host ISA", e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| err("ISA", e))?;
    // Fused multiply-add for the math polynomials, where the CPU has it (else `fma` would be
    // a libcall).
    let fma = isa
        .isa_flags()
        .iter()
        .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    let helpers = runtime::helpers();
    for h in &helpers {
        jb.symbol(h.name, h.addr);
    }
    let mut module = JITModule::new(jb);

    // Helpers, declared once per module.
    let mut helper_ids: Vec<(&'static str, FuncId)> = Vec::new();
    for h in &helpers {
        let mut sig = module.make_signature();
        let t = if h.f64 { types::F64 } else { types::F32 };
        for _ in 0..h.args {
            sig.params.push(AbiParam::new(t));
        }
        sig.returns.push(AbiParam::new(t));
        let id = module
            .declare_function(h.name, Linkage::Import, &sig)
            .map_err(|e| err("declare", e))?;
        helper_ids.push((h.name, id));
    }

    let mut sig = module.make_signature();
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I64));
    }
    let extern_math = extern_math();
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut ids: Vec<Option<FuncId>> = Vec::new();
    let mut clif = Vec::new();
    let mut asm = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        if matches!(k.body, Body::Call(_)) {
            ids.push(None);
            clif.push(String::new());
            continue;
        }
        let id = module
            .declare_function(&format!("{}_{i}", k.name), Linkage::Local, &sig)
            .map_err(|e| err("declare", e))?;
        ctx.func.signature = sig.clone();
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut funcs = HashMap::new();
        for &(name, hid) in &helper_ids {
            funcs.insert(name, module.declare_func_in_func(hid, &mut ctx.func));
        }
        let b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        emit::emit_kernel(b, k, &funcs, extern_math, fma, module.target_config())
            .map_err(|e| format!("kernel {}: {e}", k.name))?;
        if want_clif {
            clif.push(format!("; {}\n{}", k.name, ctx.func.display()));
        } else {
            clif.push(String::new());
        }
        ctx.set_disasm(want_asm);
        module
            .define_function(id, &mut ctx)
            .map_err(|e| err(&format!("compiling kernel {}", k.name), format!("{e:?}")))?;
        if want_asm {
            let text = ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default();
            asm.push(format!("; {}\n{text}", k.name));
        }
        module.clear_context(&mut ctx);
        ids.push(Some(id));
    }
    module
        .finalize_definitions()
        .map_err(|e| err("finalize", e))?;
    let fns = ids
        .iter()
        .map(|id| id.map(|id| KernelFn(module.get_finalized_function(id))))
        .collect();
    Ok(Compiled {
        code: Code {
            module: Some(module),
        },
        fns,
        clif,
        asm,
    })
}
