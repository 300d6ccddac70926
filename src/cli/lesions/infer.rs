//! `kiln lesions infer --model RUN --input SUBJECT_DIR --out mask.nii.gz`: segments one
//! subject with a trained run (overlapping patches, averaged probabilities, threshold).

use crate::lesions::infer::{segment, write_outputs, THRESHOLD};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// The run directory written by `kiln lesions train`.
    #[arg(long)]
    pub model: PathBuf,
    /// The subject directory (FLAIR_brain, T1_brain, brainmask; wmh for the overlay's truth).
    #[arg(long)]
    pub input: PathBuf,
    /// The output mask (NIfTI, u8 0/1, the FLAIR image's geometry).
    #[arg(long)]
    pub out: PathBuf,
    /// Lesion probability threshold.
    #[arg(long, default_value_t = THRESHOLD)]
    pub threshold: f32,
    /// The overlay PNG (default: the output's name with .png).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Write no overlay PNG.
    #[arg(long)]
    pub no_png: bool,
}

pub fn run(args: InferArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !(0.0..=1.0).contains(&args.threshold) {
        return Err(format!("--threshold must be in [0, 1], got {}", args.threshold).into());
    }
    let seg = segment(&args.model, &args.input, args.threshold)?;
    let png = if args.no_png {
        None
    } else {
        Some(args.png.clone().unwrap_or_else(|| {
            let name = args
                .out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name
                .trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .to_string();
            args.out.with_file_name(format!("{stem}.png"))
        }))
    };
    let has_truth = args
        .input
        .join(crate::lesions::patches::LABEL_FILE)
        .is_file();
    write_outputs(&seg, &args.out, png.as_deref(), has_truth)?;
    let voxels = seg.mask.data.iter().filter(|&&v| v > 0.5).count();
    println!(
        "{}: {voxels} lesion voxels (threshold {}) -> {}",
        seg.subject.id,
        args.threshold,
        args.out.display()
    );
    if let Some(p) = png {
        println!("overlay: {}", p.display());
    }
    Ok(())
}
