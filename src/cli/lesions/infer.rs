//! `kiln lesions infer` (being built).

#[derive(clap::Args, Debug)]
pub struct InferArgs {}

pub fn run(_args: InferArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("`kiln lesions infer` is being built".into())
}
