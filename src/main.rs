//! The `kiln` command: NIfTI tools and the MRI lesion-segmentation pipeline.
//!
//! `kiln nifti info FILE`, `kiln lesions synth|train|infer|eval ...`; `kiln --help` lists them.

fn main() {
    if let Err(e) = kiln::cli::run(std::env::args_os()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
