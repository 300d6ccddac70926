//! `kiln lesions eval` (being built).

#[derive(clap::Args, Debug)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("`kiln lesions eval` is being built".into())
}
