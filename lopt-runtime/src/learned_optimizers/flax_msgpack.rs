//! Reading and writing θ in flax's msgpack format, as the JAX library saves it.
//!
//! The library checkpoints θ with `flax.serialization.to_bytes` /
//! `msgpack_serialize` (`checkpoints.py: save_state`, `opt_from_checkpoint.py`): the
//! state dict (for a haiku θ, nested maps from module name to parameter name to array) is
//! packed as msgpack, each array as msgpack extension type 1 whose payload is itself the
//! msgpack triple `(shape, dtype name, C-order little-endian bytes)`; NumPy scalars use
//! extension type 3 with the same payload. lopt reads such a file into a [`FlaxValue`]
//! tree with typed errors ([`FlaxMsgpackError`]) and writes one that
//! `flax.serialization.msgpack_restore` reads back (checked by `tests/lopt_reference.rs`
//! against files written by and for `scripts/make_reference_lopt.py`). No Python at run
//! time. Arrays over flax's 1 GiB chunking threshold (stored as
//! `__msgpack_chunked_array__` maps) are not supported and are reported as such.
//!
//! Each learned optimizer converts its θ to and from this tree through [`FlaxTheta`],
//! with the library's own names (`"mlp/~/linear_0"` → `"w"`, `"b"`, …).
//!
//! ```
//! use lopt_runtime::learned_optimizers::flax_msgpack::{FlaxArray, FlaxValue};
//!
//! let tree = FlaxValue::map([("log_lr", FlaxValue::Array(FlaxArray::scalar_f32(-4.6)))]);
//! let bytes = tree.to_bytes();
//! assert_eq!(FlaxValue::from_bytes(&bytes).unwrap(), tree);
//! assert!(FlaxValue::from_bytes(&bytes[..bytes.len() - 1]).is_err()); // truncated
//! ```

use std::fmt;
use std::path::Path;

use rmpv::Value;

use crate::error::Error;
use crate::scalar::Real;

/// msgpack extension code of a NumPy / JAX array in flax.
const EXT_NDARRAY: i8 = 1;
/// msgpack extension code of a complex number in flax.
const EXT_COMPLEX: i8 = 2;
/// msgpack extension code of a NumPy scalar in flax.
const EXT_NPSCALAR: i8 = 3;

/// What is wrong with a flax msgpack file (defined beside [`Error`], which holds it).
pub use crate::error::FlaxMsgpackError;

/// The elements of an array, in C order, by dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// `float32`.
    F32(Vec<f32>),
    /// `float64`.
    F64(Vec<f64>),
    /// `int32`.
    I32(Vec<i32>),
    /// `int64`.
    I64(Vec<i64>),
    /// `bool`.
    Bool(Vec<bool>),
}

impl ArrayData {
    fn len(&self) -> usize {
        match self {
            ArrayData::F32(v) => v.len(),
            ArrayData::F64(v) => v.len(),
            ArrayData::I32(v) => v.len(),
            ArrayData::I64(v) => v.len(),
            ArrayData::Bool(v) => v.len(),
        }
    }
}

/// An array as flax stores it: shape and C-order elements.
#[derive(Debug, Clone, PartialEq)]
pub struct FlaxArray {
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The elements.
    pub data: ArrayData,
}

impl FlaxArray {
    /// A 0-d `float32` array.
    pub fn scalar_f32(x: f32) -> Self {
        FlaxArray {
            shape: vec![],
            data: ArrayData::F32(vec![x]),
        }
    }

    /// A `float32` array of `shape` from elements of any scalar (lane 0 of a packet),
    /// `Err` when the count does not match the shape.
    pub fn from_real<S: Real>(shape: Vec<usize>, data: &[S]) -> Result<Self, FlaxMsgpackError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(FlaxMsgpackError::BadArray(format!(
                "shape {shape:?} holds {n} elements, got {}",
                data.len()
            )));
        }
        Ok(FlaxArray {
            shape,
            data: ArrayData::F32(data.iter().map(|x| x.lane(0) as f32).collect()),
        })
    }

    /// The elements as `f64` (`float32`/`float64` only).
    pub fn to_f64(&self) -> Result<Vec<f64>, FlaxMsgpackError> {
        match &self.data {
            ArrayData::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
            ArrayData::F64(v) => Ok(v.clone()),
            _ => Err(FlaxMsgpackError::UnsupportedDtype(
                "an integer or bool array where floats are needed".into(),
            )),
        }
    }

    fn dtype_name(&self) -> &'static str {
        match self.data {
            ArrayData::F32(_) => "float32",
            ArrayData::F64(_) => "float64",
            ArrayData::I32(_) => "int32",
            ArrayData::I64(_) => "int64",
            ArrayData::Bool(_) => "bool",
        }
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            ArrayData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }
}

/// A flax state dict: maps (in file order), arrays and plain msgpack scalars.
#[derive(Debug, Clone, PartialEq)]
pub enum FlaxValue {
    /// A map from names to values (flax writes lists and tuples as maps keyed `"0"`, `"1"`, …).
    Map(Vec<(String, FlaxValue)>),
    /// An array (extension type 1 or 3).
    Array(FlaxArray),
    /// A msgpack list.
    List(Vec<FlaxValue>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A string.
    Str(String),
    /// `None`.
    Nil,
}

fn malformed(e: impl fmt::Display) -> FlaxMsgpackError {
    FlaxMsgpackError::Malformed(e.to_string())
}

fn decode_array(payload: &[u8]) -> Result<FlaxArray, FlaxMsgpackError> {
    let mut rd = payload;
    let v = rmpv::decode::read_value(&mut rd).map_err(malformed)?;
    if !rd.is_empty() {
        return Err(FlaxMsgpackError::BadArray(
            "bytes after the array triple".into(),
        ));
    }
    let Value::Array(parts) = v else {
        return Err(FlaxMsgpackError::BadArray("payload is not a triple".into()));
    };
    let [shape, dtype, buf] = parts.as_slice() else {
        return Err(FlaxMsgpackError::BadArray(format!(
            "payload has {} parts, expected 3",
            parts.len()
        )));
    };
    let shape: Vec<usize> = match shape {
        Value::Array(dims) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| FlaxMsgpackError::BadArray(format!("dimension {d}")))
            })
            .collect::<Result<_, _>>()?,
        other => return Err(FlaxMsgpackError::BadArray(format!("shape {other}"))),
    };
    let dtype = match dtype {
        Value::String(s) => s.as_str().unwrap_or("").to_string(),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => return Err(FlaxMsgpackError::BadArray(format!("dtype {other}"))),
    };
    let Value::Binary(buf) = buf else {
        return Err(FlaxMsgpackError::BadArray("buffer is not binary".into()));
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| FlaxMsgpackError::BadArray(format!("shape {shape:?} overflows")))?;
    let width = match dtype.as_str() {
        "float32" | "int32" => 4,
        "float64" | "int64" => 8,
        "bool" => 1,
        _ => return Err(FlaxMsgpackError::UnsupportedDtype(dtype)),
    };
    if n.checked_mul(width) != Some(buf.len()) {
        return Err(FlaxMsgpackError::BadArray(format!(
            "{dtype} array of shape {shape:?} needs {} bytes, has {}",
            n.saturating_mul(width),
            buf.len()
        )));
    }
    let w4 = |c: &[u8]| <[u8; 4]>::try_from(c).expect("chunk of 4");
    let w8 = |c: &[u8]| <[u8; 8]>::try_from(c).expect("chunk of 8");
    let data = match dtype.as_str() {
        "float32" => ArrayData::F32(
            buf.chunks_exact(4)
                .map(|c| f32::from_le_bytes(w4(c)))
                .collect(),
        ),
        "int32" => ArrayData::I32(
            buf.chunks_exact(4)
                .map(|c| i32::from_le_bytes(w4(c)))
                .collect(),
        ),
        "float64" => ArrayData::F64(
            buf.chunks_exact(8)
                .map(|c| f64::from_le_bytes(w8(c)))
                .collect(),
        ),
        "int64" => ArrayData::I64(
            buf.chunks_exact(8)
                .map(|c| i64::from_le_bytes(w8(c)))
                .collect(),
        ),
        _ => ArrayData::Bool(buf.iter().map(|&b| b != 0).collect()),
    };
    Ok(FlaxArray { shape, data })
}

fn from_rmpv(v: Value) -> Result<FlaxValue, FlaxMsgpackError> {
    Ok(match v {
        Value::Nil => FlaxValue::Nil,
        Value::Boolean(b) => FlaxValue::Bool(b),
        Value::Integer(i) => FlaxValue::Int(
            i.as_i64()
                .ok_or_else(|| FlaxMsgpackError::Unexpected(format!("integer {i}")))?,
        ),
        Value::F32(x) => FlaxValue::Float(x as f64),
        Value::F64(x) => FlaxValue::Float(x),
        Value::String(s) => FlaxValue::Str(
            s.into_str()
                .ok_or_else(|| FlaxMsgpackError::Unexpected("a string that is not UTF-8".into()))?,
        ),
        Value::Binary(_) => return Err(FlaxMsgpackError::Unexpected("raw bytes".into())),
        Value::Array(a) => FlaxValue::List(a.into_iter().map(from_rmpv).collect::<Result<_, _>>()?),
        Value::Map(m) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                let Value::String(k) = k else {
                    return Err(FlaxMsgpackError::Unexpected(format!("map key {k}")));
                };
                let k = k.into_str().ok_or_else(|| {
                    FlaxMsgpackError::Unexpected("a key that is not UTF-8".into())
                })?;
                if k == "__msgpack_chunked_array__" {
                    return Err(FlaxMsgpackError::Unexpected(
                        "a chunked array (over 1 GiB): not supported".into(),
                    ));
                }
                out.push((k, from_rmpv(v)?));
            }
            FlaxValue::Map(out)
        }
        Value::Ext(EXT_NDARRAY | EXT_NPSCALAR, payload) => {
            FlaxValue::Array(decode_array(&payload)?)
        }
        Value::Ext(code @ EXT_COMPLEX, _) | Value::Ext(code, _) => {
            return Err(FlaxMsgpackError::UnsupportedExt(code))
        }
    })
}

fn to_rmpv(v: &FlaxValue) -> Value {
    match v {
        FlaxValue::Nil => Value::Nil,
        FlaxValue::Bool(b) => Value::Boolean(*b),
        FlaxValue::Int(i) => Value::from(*i),
        FlaxValue::Float(x) => Value::F64(*x),
        FlaxValue::Str(s) => Value::from(s.as_str()),
        FlaxValue::List(a) => Value::Array(a.iter().map(to_rmpv).collect()),
        FlaxValue::Map(m) => Value::Map(
            m.iter()
                .map(|(k, v)| (Value::from(k.as_str()), to_rmpv(v)))
                .collect(),
        ),
        FlaxValue::Array(a) => {
            let triple = Value::Array(vec![
                Value::Array(a.shape.iter().map(|&d| Value::from(d as u64)).collect()),
                Value::from(a.dtype_name()),
                Value::Binary(a.to_le_bytes()),
            ]);
            let mut payload = Vec::new();
            rmpv::encode::write_value(&mut payload, &triple).expect("writing to a Vec");
            Value::Ext(EXT_NDARRAY, payload)
        }
    }
}

impl FlaxValue {
    /// A map from `(name, value)` pairs, in order.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, FlaxValue)>) -> Self {
        FlaxValue::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Parses flax msgpack bytes (`flax.serialization.to_bytes`); the whole input must be
    /// one value.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FlaxMsgpackError> {
        let mut rd = bytes;
        let v = rmpv::decode::read_value(&mut rd).map_err(malformed)?;
        if !rd.is_empty() {
            return Err(FlaxMsgpackError::TrailingBytes(rd.len()));
        }
        from_rmpv(v)
    }

    /// Serializes as `flax.serialization.msgpack_serialize` does (arrays as extension
    /// type 1), so that `flax.serialization.msgpack_restore` reads it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &to_rmpv(self)).expect("writing to a Vec");
        out
    }

    /// Reads a file; `Err` ([`Error::Io`] or [`Error::ThetaFile`]) when it cannot be read
    /// or parsed.
    pub fn read_file(path: impl AsRef<Path>) -> crate::error::Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|error| Error::ThetaFile {
            path: path.display().to_string(),
            error,
        })
    }

    /// Writes [`FlaxValue::to_bytes`] to a file.
    pub fn write_file(&self, path: impl AsRef<Path>) -> crate::error::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The value at `path` (map keys, outermost first).
    pub fn get(&self, path: &[&str]) -> Result<&FlaxValue, FlaxMsgpackError> {
        let mut cur = self;
        for (depth, key) in path.iter().enumerate() {
            let FlaxValue::Map(m) = cur else {
                return Err(FlaxMsgpackError::Missing(path[..=depth].join("/")));
            };
            cur = m
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| FlaxMsgpackError::Missing(path[..=depth].join("/")))?;
        }
        Ok(cur)
    }

    /// The float array at `path`, which must have `shape`, as scalars `S`.
    pub fn real_array<S: Real>(
        &self,
        path: &[&str],
        shape: &[usize],
    ) -> Result<Vec<S>, FlaxMsgpackError> {
        let FlaxValue::Array(a) = self.get(path)? else {
            return Err(FlaxMsgpackError::Unexpected(format!(
                "`{}` is not an array",
                path.join("/")
            )));
        };
        if a.shape != shape {
            return Err(FlaxMsgpackError::Shape {
                path: path.join("/"),
                expected: shape.to_vec(),
                got: a.shape.clone(),
            });
        }
        debug_assert_eq!(a.data.len(), shape.iter().product::<usize>());
        Ok(a.to_f64()?.into_iter().map(S::from_f64).collect())
    }
}

/// A θ that converts to and from the JAX library's state dict of it, with the library's
/// names, so that a θ saved by the library loads into lopt and one meta-trained in lopt
/// loads in the library.
pub trait FlaxTheta: Sized {
    /// The optimizer whose configuration fixes θ's shapes.
    type Config;
    /// θ as the library's state dict (float32 arrays; lane 0 of a packet).
    fn to_flax(&self) -> FlaxValue;
    /// θ from the library's state dict; `Err` on a missing entry or a wrong shape.
    fn from_flax(config: &Self::Config, value: &FlaxValue) -> Result<Self, FlaxMsgpackError>;
}
/// A θ leaf as a flax array of `shape` (which `v` fills: the leaf is its own shape).
pub(crate) fn arr<S: Real>(shape: Vec<usize>, v: &[S]) -> FlaxValue {
    FlaxValue::Array(FlaxArray::from_real(shape, v).expect("θ leaf of its own shape"))
}
