//! The `kiln` command line (`src/main.rs` calls [`run`]). One module per subcommand; each
//! defines its clap arguments and a `run` function returning a `Result`, so the binary prints a
//! clear error and exits with status 1 instead of panicking.

pub mod bench;
pub mod lesions;
pub mod nifti;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

/// A deep-learning engine built like a compiler, and the tools of its MRI tutorial.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// NIfTI-1/2 volumes.
    #[command(subcommand)]
    Nifti(nifti::NiftiCommand),
    /// White-matter lesion segmentation: a synthetic cohort, U-Net training, inference, metrics.
    #[command(subcommand)]
    Lesions(lesions::LesionsCommand),
    /// Benchmarks: the tutorial's workloads on kiln, and with --compare-torch on PyTorch.
    Bench(Box<bench::BenchArgs>),
}

/// Parses `args` (the program name first) and runs the subcommand.
pub fn run<I, T>(args: I) -> Result<(), Box<dyn std::error::Error>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors.
            e.print()?;
            if e.use_stderr() {
                std::process::exit(2);
            }
            return Ok(());
        }
    };
    match cli.command {
        Command::Nifti(c) => nifti::run(c),
        Command::Lesions(c) => lesions::run(c),
        Command::Bench(a) => bench::run(*a),
    }
}
