//! NIfTI-1 and NIfTI-2 volumes (being built).
