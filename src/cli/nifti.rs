//! `kiln nifti ...`.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum NiftiCommand {
    /// Prints one JSON object on one line: shape, datatype, pixdim, affine, min, max, mean, sum.
    Info {
        /// A .nii or .nii.gz file.
        file: PathBuf,
    },
}

pub fn run(cmd: NiftiCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        NiftiCommand::Info { file } => {
            Err(format!("{}: `kiln nifti info` is being built", file.display()).into())
        }
    }
}
