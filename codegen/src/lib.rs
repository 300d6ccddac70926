//! kiln-codegen: scheduling, the kernel IR and the backends.
//!
//! For now kiln executes graphs with the reference interpreter of `kiln-ir`; the Cranelift CPU
//! backend and the PTX backend arrive with their own issues and plug in behind [`Backend`].

/// Where a graph is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The reference interpreter of `kiln-ir`: clear, not fast; the oracle for the others.
    #[default]
    Interpreter,
}

impl Backend {
    /// The backend selected by `KILN_BACKEND` (`interp`), or the default.
    pub fn from_env() -> Backend {
        match std::env::var("KILN_BACKEND").as_deref() {
            Ok("interp") | Ok("interpreter") | Err(_) => Backend::Interpreter,
            Ok(other) => {
                log::warn!("KILN_BACKEND={other} is not a known backend; using the interpreter");
                Backend::Interpreter
            }
        }
    }
}
