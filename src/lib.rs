//! kiln (being written)
