//! Host tensors: the values of `const` nodes, interpreter values and realised tensors.

use crate::shape::numel;
use crate::{DType, TensorType};

/// Element storage, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` copies of `value` converted to `dtype` (bools: nonzero is true, ints: truncation).
    pub fn splat(dtype: DType, value: f64, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![value as f32; n]),
            DType::F64 => Data::F64(vec![value; n]),
            DType::I64 => Data::I64(vec![value as i64; n]),
            DType::Bool => Data::Bool(vec![value != 0.0; n]),
        }
    }

    /// Element `i` widened to f64 (exact for f32, bool; exact for i64 up to 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::F32(v) => v[i] as f64,
            Data::F64(v) => v[i],
            Data::I64(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// All elements widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get_f64(i)).collect()
    }

    /// Converts every element to `dtype` with the semantics of PyTorch's `.to(dtype)`:
    /// float to int truncates toward zero, anything to bool is `!= 0`.
    pub fn cast(&self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            return self.clone();
        }
        match (self, dtype) {
            (Data::I64(v), DType::F32) => Data::F32(v.iter().map(|&x| x as f32).collect()),
            (Data::I64(v), DType::F64) => Data::F64(v.iter().map(|&x| x as f64).collect()),
            (Data::I64(v), DType::Bool) => Data::Bool(v.iter().map(|&x| x != 0).collect()),
            (Data::F32(v), DType::I64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (Data::F64(v), DType::I64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (Data::Bool(v), DType::I64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (_, DType::F32) => Data::F32((0..self.len()).map(|i| self.get_f64(i) as f32).collect()),
            (_, DType::F64) => Data::F64(self.to_f64_vec()),
            (_, DType::Bool) => {
                Data::Bool((0..self.len()).map(|i| self.get_f64(i) != 0.0).collect())
            }
            (_, DType::I64) => unreachable!("all sources to i64 are handled above"),
        }
    }
}

/// A dense row-major host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Literal {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Literal {
    /// Builds a literal, checking that the data length matches the shape.
    pub fn new(shape: impl Into<Vec<usize>>, data: Data) -> Result<Literal, String> {
        let shape = shape.into();
        if numel(&shape) != data.len() {
            return Err(format!(
                "shape {:?} holds {} elements but {} were given",
                shape,
                numel(&shape),
                data.len()
            ));
        }
        Ok(Literal { shape, data })
    }

    pub fn scalar_f32(v: f32) -> Literal {
        Literal {
            shape: vec![],
            data: Data::F32(vec![v]),
        }
    }

    pub fn splat(ty: &TensorType, value: f64) -> Literal {
        Literal {
            shape: ty.shape.clone(),
            data: Data::splat(ty.dtype, value, ty.numel()),
        }
    }

    pub fn from_f64(shape: impl Into<Vec<usize>>, dtype: DType, values: &[f64]) -> Literal {
        let shape = shape.into();
        assert_eq!(
            numel(&shape),
            values.len(),
            "Literal::from_f64: length does not match shape"
        );
        Literal {
            shape,
            data: Data::F64(values.to_vec()).cast(dtype),
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data.to_f64_vec()
    }
}
