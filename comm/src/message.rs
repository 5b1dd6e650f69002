//! Messages: a shape, a dtype and an owned typed buffer.
//!
//! The buffer is a typed `Vec` (never a `Vec<u8>` reinterpreted), so the byte view is always
//! correctly aligned and a message built from a `Vec<f32>` gives the same `Vec<f32>` back without a
//! copy. The local backend moves messages through channels; the TCP backend writes [`Message::bytes`]
//! straight to the socket and reads straight into a freshly allocated typed buffer.
//! 16-bit floats travel as their raw `u16` bits: comm knows buffers, not number formats.

use std::fmt;

use crate::error::{CommError, Result};

/// Element type of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// bfloat16, carried as raw `u16` bits.
    BF16,
    /// IEEE half, carried as raw `u16` bits.
    F16,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit signed integer.
    I64,
    /// Byte.
    U8,
}

impl DType {
    /// Every dtype, in wire-code order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::U32,
        DType::I64,
        DType::U8,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }

    /// The one-byte code used on the wire.
    pub fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F64 => 1,
            DType::BF16 => 2,
            DType::F16 => 3,
            DType::U32 => 4,
            DType::I64 => 5,
            DType::U8 => 6,
        }
    }

    /// Inverse of [`DType::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        };
        f.write_str(name)
    }
}

/// An owned, typed element buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// bf16 elements as raw bits.
    BF16(Vec<u16>),
    /// f16 elements as raw bits.
    F16(Vec<u16>),
    /// u32 elements.
    U32(Vec<u32>),
    /// i64 elements.
    I64(Vec<i64>),
    /// Bytes.
    U8(Vec<u8>),
}

impl Data {
    /// A zero-filled buffer of `len` elements.
    pub fn zeros(dtype: DType, len: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; len]),
            DType::F64 => Data::F64(vec![0.0; len]),
            DType::BF16 => Data::BF16(vec![0; len]),
            DType::F16 => Data::F16(vec![0; len]),
            DType::U32 => Data::U32(vec![0; len]),
            DType::I64 => Data::I64(vec![0; len]),
            DType::U8 => Data::U8(vec![0; len]),
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::BF16(_) => DType::BF16,
            Data::F16(_) => DType::F16,
            Data::U32(_) => DType::U32,
            Data::I64(_) => DType::I64,
            Data::U8(_) => DType::U8,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::BF16(v) | Data::F16(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U8(v) => v.len(),
        }
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as native-endian bytes (no copy).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice(v),
            Data::F64(v) => bytemuck::cast_slice(v),
            Data::BF16(v) | Data::F16(v) => bytemuck::cast_slice(v),
            Data::U32(v) => bytemuck::cast_slice(v),
            Data::I64(v) => bytemuck::cast_slice(v),
            Data::U8(v) => v,
        }
    }

    /// Mutable byte view, used to read a payload straight into the typed buffer.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice_mut(v),
            Data::F64(v) => bytemuck::cast_slice_mut(v),
            Data::BF16(v) | Data::F16(v) => bytemuck::cast_slice_mut(v),
            Data::U32(v) => bytemuck::cast_slice_mut(v),
            Data::I64(v) => bytemuck::cast_slice_mut(v),
            Data::U8(v) => v,
        }
    }
}

/// Number of elements a shape holds, or `None` on overflow. The empty shape is a scalar (1).
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// A tensor-like buffer in flight: shape, dtype and owned elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    shape: Vec<usize>,
    data: Data,
}

macro_rules! typed_access {
    ($ctor:ident, $into:ident, $as:ident, $variant:ident, $t:ty, $dt:expr) => {
        /// Builds a message from a typed buffer (moved, not copied); checks the element count.
        pub fn $ctor(shape: Vec<usize>, data: Vec<$t>) -> Result<Message> {
            Message::new(shape, Data::$variant(data))
        }

        /// Takes the typed buffer back out (no copy), or says which dtype the message holds.
        pub fn $into(self) -> Result<Vec<$t>> {
            match self.data {
                Data::$variant(v) => Ok(v),
                other => Err(CommError::DTypeMismatch {
                    expected: $dt,
                    actual: other.dtype(),
                }),
            }
        }

        /// Borrows the typed elements, or says which dtype the message holds.
        pub fn $as(&self) -> Result<&[$t]> {
            match &self.data {
                Data::$variant(v) => Ok(v),
                other => Err(CommError::DTypeMismatch {
                    expected: $dt,
                    actual: other.dtype(),
                }),
            }
        }
    };
}

impl Message {
    /// Builds a message; the buffer must hold exactly the elements the shape implies.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Message> {
        let expected = numel(&shape);
        if expected != Some(data.len()) {
            return Err(CommError::BadShape {
                expected: expected.unwrap_or(usize::MAX),
                actual: data.len(),
                dtype: data.dtype(),
                shape,
            });
        }
        Ok(Message { shape, data })
    }

    /// A 1-D message of all the buffer's elements (cannot fail: the shape is `[len]`).
    pub fn vector(data: Data) -> Message {
        Message {
            shape: vec![data.len()],
            data,
        }
    }

    /// A zero-filled message of the given dtype and shape.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Message> {
        let n = numel(&shape).ok_or_else(|| CommError::BadShape {
            shape: shape.clone(),
            dtype,
            expected: usize::MAX,
            actual: 0,
        })?;
        Ok(Message {
            shape,
            data: Data::zeros(dtype, n),
        })
    }

    typed_access!(from_f32, into_f32, as_f32, F32, f32, DType::F32);
    typed_access!(from_f64, into_f64, as_f64, F64, f64, DType::F64);
    typed_access!(
        from_bf16_bits,
        into_bf16_bits,
        as_bf16_bits,
        BF16,
        u16,
        DType::BF16
    );
    typed_access!(
        from_f16_bits,
        into_f16_bits,
        as_f16_bits,
        F16,
        u16,
        DType::F16
    );
    typed_access!(from_u32, into_u32, as_u32, U32, u32, DType::U32);
    typed_access!(from_i64, into_i64, as_i64, I64, i64, DType::I64);
    typed_access!(from_u8, into_u8, as_u8, U8, u8, DType::U8);

    /// The shape (dimension sizes, outermost first).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Payload size in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.data.len() * self.dtype().size_in_bytes()
    }

    /// The elements as native-endian bytes (no copy).
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Borrows the typed buffer.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Splits into shape and buffer (no copy).
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }

    /// `dtype[d0, d1, ...]`, the form errors use.
    pub fn describe(&self) -> String {
        describe(self.dtype(), &self.shape)
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.bytes_mut()
    }
}

/// `dtype[d0, d1, ...]`.
pub(crate) fn describe(dtype: DType, shape: &[usize]) -> String {
    format!("{dtype}{shape:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_codes_round_trip_and_unknown_codes_are_rejected() {
        for dt in DType::ALL {
            assert_eq!(DType::from_code(dt.code()), Some(dt));
        }
        assert_eq!(DType::from_code(7), None);
    }

    #[test]
    fn typed_buffers_come_back_without_copy() {
        let v = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ptr = v.as_ptr();
        let m = Message::from_f32(vec![2, 3], v).unwrap();
        assert_eq!(m.size_in_bytes(), 24);
        assert_eq!(&m.bytes()[..4], &1.0f32.to_ne_bytes());
        let back = m.into_f32().unwrap();
        assert_eq!(back.as_ptr(), ptr);
    }

    #[test]
    fn element_count_must_match_shape() {
        let err = Message::from_f64(vec![2, 2], vec![0.0; 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape [2, 2] needs 4 elements of f64, but the buffer holds 3"
        );
        let err = Message::zeros(DType::U8, vec![usize::MAX, 2]).unwrap_err();
        assert!(matches!(err, CommError::BadShape { .. }));
    }

    #[test]
    fn wrong_typed_view_names_both_dtypes() {
        let m = Message::from_u32(vec![1], vec![7]).unwrap();
        let err = m.as_f32().unwrap_err();
        assert_eq!(err.to_string(), "message holds u32 elements, not f32");
        assert_eq!(m.describe(), "u32[1]");
    }
}
