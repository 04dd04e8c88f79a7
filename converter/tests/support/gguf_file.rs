//! Edits of a GGUF file for tests: read one with tern-convert's parser, change keys or
//! tensors, write it again (little-endian, alignment 32, as gguf-py writes).

use tern_convert::gguf::{Gguf, Value};

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

pub struct File {
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

impl File {
    pub fn read(bytes: &[u8]) -> File {
        let g = Gguf::parse(bytes).unwrap();
        let tensors = g
            .tensors
            .iter()
            .map(|t| Tensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                data: g.data(t).unwrap().to_vec(),
            })
            .collect();
        File { kv: g.kv.clone(), tensors }
    }

    pub fn set(&mut self, key: &str, value: Value) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.kv.push((key.into(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _)| k != key);
    }

    pub fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    pub fn write(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            string(&mut b, k);
            b.extend_from_slice(&type_code(v).to_le_bytes());
            value(&mut b, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            string(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ggml_type.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        for t in &self.tensors {
            b.resize(b.len().div_ceil(32) * 32, 0);
            b.extend_from_slice(&t.data);
        }
        b
    }
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::Str(s) => string(b, s),
        Value::Array(items) => {
            b.extend_from_slice(&items.first().map_or(4, type_code).to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                value(b, item);
            }
        }
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}
