//! `kiln lesions ...`: the tutorial's white-matter-lesion pipeline.

pub mod eval;
pub mod infer;
pub mod synth;
pub mod train;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum LesionsCommand {
    /// Derives a cohort of subjects with lesions from the MNI152 template.
    Synth(synth::SynthArgs),
    /// Trains the 3-D patch U-Net on a cohort.
    Train(Box<train::TrainArgs>),
    /// Segments one subject with a trained model.
    Infer(infer::InferArgs),
    /// Lesion metrics of a prediction against ground truth, or of a model over a cohort.
    Eval(eval::EvalArgs),
    /// End to end: cohort, training, inference on held-out subjects, metrics table.
    Run(crate::lesions::run::RunArgs),
}

pub fn run(cmd: LesionsCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        LesionsCommand::Synth(a) => synth::run(a),
        LesionsCommand::Train(a) => train::run(*a),
        LesionsCommand::Infer(a) => infer::run(a),
        LesionsCommand::Eval(a) => eval::run(a),
        LesionsCommand::Run(a) => crate::lesions::run::cli(a),
    }
}
