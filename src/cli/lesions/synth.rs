//! `kiln lesions synth`: a cohort of subjects with white-matter lesions derived from the
//! MNI152 template (see [`crate::lesions::synth`]).

use crate::lesions::synth::{self, Anatomy, CohortOptions, Template};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output directory: DIR/<id>/{FLAIR_brain,T1_brain,wmh,brainmask}.nii.gz, preview.png,
    /// and DIR/subjects.tsv.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of subjects.
    #[arg(long, default_value_t = 10)]
    pub subjects: usize,
    /// Random seed: the same seed gives the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Template directory: the 2 mm files of data/mni152, or the 1 mm nilearn originals
    /// (reduced on the fly). Default: this crate's data/mni152.
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Skip the preview PNGs.
    #[arg(long)]
    pub no_preview: bool,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write the 2 mm template (as loaded from --template) into this directory; this is
    /// how data/mni152 was made from the 1 mm originals.
    #[arg(long, value_name = "DIR")]
    pub export_template: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dir = args
        .template
        .clone()
        .unwrap_or_else(synth::default_template_dir);
    let t0 = std::time::Instant::now();
    let template = Template::load(&dir)?;
    if let Some(exp) = &args.export_template {
        template.write(exp)?;
        eprintln!("wrote the 2 mm template to {}", exp.display());
    }
    if args.subjects == 0 {
        return Ok(());
    }
    let anat = Anatomy::new(template);
    let opts = CohortOptions {
        subjects: args.subjects,
        seed: args.seed,
        preview: !args.no_preview,
        threads: args.threads,
    };
    let summaries = synth::synthesize_cohort(&anat, &args.out, &opts)?;
    for s in &summaries {
        eprintln!(
            "{}: {} lesions placed, {} lesion voxels ({:.2} ml), {} label-2 voxels",
            s.id, s.lesions, s.lesion_voxels, s.lesion_ml, s.other_voxels
        );
    }
    eprintln!(
        "wrote {} subjects to {} in {:.1} s",
        summaries.len(),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
