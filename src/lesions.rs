//! The MRI white-matter-lesion pipeline of the tutorial's second and third parts: a cohort
//! derived from real anatomy, patch sampling, the 3-D U-Net's training and inference, and the
//! lesion metrics.

pub mod infer;
pub mod metrics;
pub mod patches;
pub mod run;
pub mod synth;
pub mod table;
pub mod train;
