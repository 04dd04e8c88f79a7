//! The GGUF container, read with every length and offset checked against the file (it is
//! untrusted input): header, metadata key/values (every value type, arrays included),
//! tensor infos, alignment and the data region.
//!
//! Layout as llama.cpp defines it (checked in ggerganov/llama.cpp `gguf-py/gguf/constants.py`:
//! `GGUF_MAGIC`, `GGUF_VERSION = 3`, `GGUF_DEFAULT_ALIGNMENT = 32`, `GGUFValueType`; and
//! `gguf-py/gguf/gguf_writer.py`, `write_ti_data_to_file` / `write_tensors_to_file`):
//! little-endian; `"GGUF"`, u32 version, u64 tensor count, u64 key/value count; each key a
//! string (u64 length + UTF-8 bytes), a u32 value type and the value; each tensor info a name,
//! u32 dimension count, that many u64 dimensions (ne0 first: the row length), u32 ggml type
//! and u64 offset into the data region; the data region starts at the next multiple of
//! `general.alignment` (default 32) after the infos, and every offset is a multiple of it.

use anyhow::{bail, Result};
use std::collections::HashSet;

/// `"GGUF"` as the file's first four bytes.
const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays nest (an array of arrays is legal GGUF); deeper nesting than this is refused.
const MAX_DEPTH: usize = 4;

/// ggml tensor types this importer reads (the numbers are ggml's `enum ggml_type`).
pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const BF16: u32 = 30;
/// bitnet.cpp's 2-bit ternary type (microsoft/BitNet's llama.cpp fork, `ggml/include/ggml.h`:
/// `GGML_TYPE_I2_S = 36`, `I8_S = 37`, `TL1 = 38`, `TL2 = 39`; ik_llama.cpp keeps 36 for it).
pub const I2_S: u32 = 36;

/// The ggml name of a tensor type, for messages. The numbers above 35 are bitnet.cpp's
/// (mainline llama.cpp has since given 39 to MXFP4).
pub fn type_name(t: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
        "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "I2_S", "I8_S",
        "TL1", "TL2",
    ];
    names.get(t as usize).map_or_else(|| format!("ggml type {t}"), |n| format!("{n} (ggml type {t})"))
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What the value is, for messages ("a string", "an array of 3").
    pub fn kind(&self) -> String {
        match self {
            Value::Str(_) => "a string".into(),
            Value::Bool(_) => "a boolean".into(),
            Value::Array(a) => format!("an array of {}", a.len()),
            Value::F32(_) | Value::F64(_) => "a float".into(),
            _ => "an integer".into(),
        }
    }
}

/// One tensor's info, checked against the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ne0 first (the row length), as GGUF stores them.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Byte range in the file, for the types whose size is known (F32, F16, BF16, I2_S).
    pub range: Option<std::ops::Range<usize>>,
    /// Bytes from this tensor's start to the next tensor's (or the end of the file).
    pub room: usize,
    pub elements: u64,
}

/// A parsed GGUF file: borrowed bytes plus everything the header says about them.
#[derive(Debug)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
}

impl<'a> Gguf<'a> {
    /// Parses and checks `bytes`; errors name the key or tensor and the byte offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if bytes.len() < 4 || &bytes[..4] != MAGIC {
            bail!("not a GGUF file (it does not start with \"GGUF\")");
        }
        r.pos = 4;
        let version = r.u32("the version")?;
        if version.swap_bytes() == 3 || version.swap_bytes() == 2 {
            bail!("a big-endian GGUF file; tern-convert reads little-endian GGUF (what llama.cpp writes)");
        }
        if version != 2 && version != 3 {
            bail!("GGUF version {version}; tern-convert reads versions 2 and 3");
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the key/value count")?;
        // Each key/value takes at least 8 + 4 bytes, each tensor info 8 + 4 + 4 + 8: a count the
        // rest of the file cannot hold is refused before anything is allocated for it.
        r.check_count(n_kv, 12, "key/value pairs")?;
        let mut kv: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        let mut seen = HashSet::new();
        for i in 0..n_kv {
            let key = r.string(&format!("the name of key {i}"))?;
            if !seen.insert(key.clone()) {
                bail!("metadata key {key} appears twice");
            }
            let t = r.u32(&format!("the type of key {key}"))?;
            let value = r.value(t, &key, 0)?;
            kv.push((key, value));
        }
        r.check_count(n_tensors, 24, "tensor infos")?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        let mut seen = HashSet::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            if !seen.insert(name.clone()) {
                bail!("tensor {name} appears twice");
            }
            let n_dims = r.u32(&format!("tensor {name}: the dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                bail!("tensor {name}: {n_dims} dimensions (expected 1 to {MAX_DIMS})");
            }
            let dims =
                (0..n_dims).map(|_| r.u64(&format!("tensor {name}: a dimension"))).collect::<Result<Vec<_>>>()?;
            let ggml_type = r.u32(&format!("tensor {name}: the type"))?;
            let offset = r.u64(&format!("tensor {name}: the offset"))?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => bail!("metadata key general.alignment: {v:?} (expected a u32 power of two)"),
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        if data_start > bytes.len() as u64 && !infos.is_empty() {
            bail!(
                "truncated: the tensor data region (at byte {data_start}) is past the end of the file ({} bytes)",
                bytes.len()
            );
        }
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        let mut ends: Vec<u64> = infos.iter().map(|i| i.3).collect();
        ends.sort_unstable();
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0 && n <= data_len.saturating_mul(8))
                .ok_or_else(|| anyhow::anyhow!("tensor {name}: dimensions {dims:?} do not fit the file"))?;
            if offset % alignment != 0 {
                bail!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}");
            }
            if offset >= data_len {
                bail!(
                    "tensor {name}: offset {offset} is past the end of the data region ({data_len} bytes): truncated?"
                );
            }
            // The next tensor's start, or the end of the file, bounds this one.
            let next = ends.get(ends.partition_point(|&o| o <= offset)).copied().unwrap_or(data_len);
            let room = (next - offset) as usize;
            let size = byte_size(ggml_type, elements);
            let range = match size {
                Some(size) if size > room as u64 => bail!(
                    "tensor {name}: {} with {elements} elements needs {size} bytes, but only {room} follow its offset \
                     {offset}{}",
                    type_name(ggml_type),
                    if next == data_len {
                        " before the end of the file (truncated?)"
                    } else {
                        " before the next tensor"
                    }
                ),
                Some(size) => {
                    let start = (data_start + offset) as usize;
                    Some(start..start + size as usize)
                }
                None => None,
            };
            tensors.push(TensorInfo { name, dims, ggml_type, range, room, elements });
        }
        Ok(Gguf { bytes, kv, tensors, alignment })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor whose size is known (checked by `parse`).
    pub fn data(&self, t: &TensorInfo) -> Option<&'a [u8]> {
        t.range.clone().map(|r| &self.bytes[r])
    }
}

/// Bytes a tensor of `elements` takes, for the types this importer reads. I2_S is bitnet.cpp's
/// x86 layout: n/4 bytes of 2-bit codes, then 32 bytes whose first 4 are the f32 scale
/// (microsoft/BitNet `src/ggml-bitnet-mad.cpp`, `quantize_i2_s`: `return nrow * row_size / 4 + 32`;
/// its llama.cpp fork, branch merge-dev, `ggml/src/ggml.c` `ggml_nbytes`: `nbytes / 4 + 32` for
/// I2_S, which sets the offsets its GGUF writer gives the tensors).
fn byte_size(ggml_type: u32, elements: u64) -> Option<u64> {
    match ggml_type {
        F32 => elements.checked_mul(4),
        F16 | BF16 => elements.checked_mul(2),
        I2_S => Some(elements / 4 + 32),
        _ => None,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left as u64 {
            bail!("truncated: {what} needs {n} bytes at byte {}, but the file has {left} left", self.pos);
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses `count` items of at least `min_size` bytes each that the rest cannot hold.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_size) > left {
            bail!("truncated or corrupt: {count} {what} cannot fit in the {left} bytes left at byte {}", self.pos);
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let b = self.take(len, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => bail!("{what}: not UTF-8 (at byte {at})"),
        }
    }

    /// One value of GGUF type `t` (`GGUFValueType`) under metadata key `key`.
    fn value(&mut self, t: u32, key: &str, depth: usize) -> Result<Value> {
        let what = format!("metadata key {key}");
        Ok(match t {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{what}: boolean byte {b} (expected 0 or 1)"),
            },
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("{what}: arrays nested more than {MAX_DEPTH} deep");
                }
                let elem = self.u32(&what)?;
                let count = self.u64(&what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    other => bail!("{what}: array of unknown value type {other}"),
                };
                self.check_count(count, min, &format!("array elements of {what}"))?;
                let items = (0..count).map(|_| self.value(elem, key, depth + 1)).collect::<Result<Vec<_>>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => bail!("{what}: unknown value type {other}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF: one u32 key, one string array, one F32 tensor of 2 × 3.
    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend_from_slice(&(t.len() as u64).to_le_bytes());
            b.extend_from_slice(t.as_bytes());
        };
        s(&mut b, "a.n");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        s(&mut b, "a.list");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        s(&mut b, "x");
        s(&mut b, "yz");
        s(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&F32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_keys_arrays_and_tensors() {
        let bytes = tiny();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.get("a.n"), Some(&Value::U32(7)));
        assert_eq!(g.get("a.list"), Some(&Value::Array(vec![Value::Str("x".into()), Value::Str("yz".into())])));
        let t = g.tensor("w").unwrap();
        assert_eq!((t.dims.as_slice(), t.elements, t.ggml_type), (&[3u64, 2][..], 6, F32));
        let d = g.data(t).unwrap();
        assert_eq!(f32::from_le_bytes(d[20..24].try_into().unwrap()), 5.0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = tiny();
        for n in 0..bytes.len() {
            assert!(Gguf::parse(&bytes[..n]).is_err(), "{n} bytes parsed");
        }
    }

    #[test]
    fn corrupt_counts_and_offsets_are_named() {
        let bytes = tiny();
        let mut b = bytes.clone();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::parse(&b).unwrap_err().to_string().contains("tensor infos cannot fit"));
        // The tensor's offset: after the header (24 bytes), the two keys (19 + 49) and the
        // rest of its info (name 9, dimension count 4, dimensions 16, type 4).
        let at = 24 + 19 + 49 + 9 + 4 + 16 + 4;
        assert_eq!(bytes[at..at + 8], [0; 8]);
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
        let err = Gguf::parse(&b).unwrap_err().to_string();
        assert!(err.contains("tensor w: offset 8 is not a multiple"), "{err}");
        let mut b = bytes.clone();
        b[3] = b'X';
        assert!(Gguf::parse(&b).unwrap_err().to_string().contains("not a GGUF file"));
    }
}
