//! Element types of IR values.

use std::fmt;

/// The element type of a tensor.
///
/// Floats carry gradients; `I64` holds class indices and `Bool` holds masks (the result of
/// comparisons, the condition of `where`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F64,
    I64,
    Bool,
}

impl DType {
    /// All dtypes, in the order the text format lists them.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::I64, DType::Bool];

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Types on which arithmetic (add, max, sum, ...) is defined.
    pub fn is_numeric(self) -> bool {
        !matches!(self, DType::Bool)
    }

    /// Size of one element in bytes, as stored by the runtime.
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::Bool => 1,
        }
    }

    /// The name used by the text format and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
