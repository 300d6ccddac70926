//! `kiln lesions train` (being built).

#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("`kiln lesions train` is being built".into())
}
