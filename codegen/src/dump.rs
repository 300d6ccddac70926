//! Dumps (`KILN_DUMP`, `KILN_DUMP_DIR`) and the per-kernel timing table (`KILN_PROFILE`).
//!
//! `KILN_DUMP=ir,sched,kernels,clif,asm` (or `all`) writes, for every program compiled, the graph
//! in the IR's text form, the schedule (which nodes each kernel fuses, buffers and their
//! storage), the kernel IR and the Cranelift IR. With `KILN_DUMP_DIR=dir` each goes to
//! `dir/prog-<key hash>.<what>.txt`; otherwise it is logged (`log::info!`, target
//! `kiln::dump`) when a logger is installed, else written to stderr.
//! `KILN_PROFILE=1` logs (target `kiln::profile`) a table of the time spent in each kernel
//! after every run, and, once per compiled program, the graph passes' table (rewrites, node
//! counts and time per pass). `KILN_DUMP=ir` also writes the IR after every graph pass that
//! changed it (`prog-<hash>.ir.<k>-<round>-<pass>.txt`; `ir.00-input` is the needed part of the
//! graph before the passes, `ir` the graph compiled).
//! `KILN_PASSES=0` compiles graphs without the graph passes (for comparisons).

use std::io::Write;

/// Which dumps `KILN_DUMP` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpFlags {
    pub ir: bool,
    pub sched: bool,
    pub kernels: bool,
    pub clif: bool,
    /// The machine code Cranelift produced, disassembled.
    pub asm: bool,
}

impl DumpFlags {
    /// Reads `KILN_DUMP`.
    pub fn from_env() -> DumpFlags {
        let Ok(v) = std::env::var("KILN_DUMP") else {
            return DumpFlags::default();
        };
        let mut f = DumpFlags::default();
        for part in v.split(',').map(str::trim) {
            match part {
                "ir" => f.ir = true,
                "sched" | "schedule" => f.sched = true,
                "kernels" | "kernel" => f.kernels = true,
                "clif" => f.clif = true,
                "asm" | "disasm" => f.asm = true,
                "all" => {
                    f = DumpFlags {
                        ir: true,
                        sched: true,
                        kernels: true,
                        clif: true,
                        asm: true,
                    }
                }
                "" => {}
                other => {
                    log::warn!(
                        "KILN_DUMP: unknown dump `{other}` (ir, sched, kernels, clif, asm, all)"
                    )
                }
            }
        }
        f
    }

    pub fn any(self) -> bool {
        self.ir || self.sched || self.kernels || self.clif || self.asm
    }
}

/// Whether `KILN_PROFILE` asks for timings.
pub fn profile_enabled() -> bool {
    std::env::var("KILN_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether the graph passes run before scheduling (`KILN_PASSES=0` turns them off).
pub fn passes_enabled() -> bool {
    std::env::var("KILN_PASSES").map_or(true, |v| v != "0")
}

/// Writes a report to the log under `target`, or to stderr when no logger listens.
pub fn report(target: &str, text: &str) {
    if log::log_enabled!(target: "kiln::dump", log::Level::Info) {
        log::info!(target: "kiln::dump", "[{target}]\n{text}");
    } else {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "[{target}]\n{text}");
    }
}

/// Writes one dump of program `prog` (`what`: ir, sched, kernels, clif, asm).
pub fn write(prog: &str, what: &str, text: &str) {
    match std::env::var("KILN_DUMP_DIR") {
        Ok(dir) if !dir.is_empty() => {
            let path = std::path::Path::new(&dir).join(format!("prog-{prog}.{what}.txt"));
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text))
            {
                log::warn!("KILN_DUMP_DIR: cannot write {}: {e}", path.display());
            }
        }
        _ => report(&format!("kiln {what} of program {prog}"), text),
    }
}
