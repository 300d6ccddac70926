//! `kiln lesions synth` (being built).

#[derive(clap::Args, Debug)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("`kiln lesions synth` is being built".into())
}
