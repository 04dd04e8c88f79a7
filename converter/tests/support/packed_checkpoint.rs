//! Pre-packed checkpoints in the published Hugging Face BitNet layouts, built from a
//! master-weight fixture and its `.tern` conversion so that they hold exactly the same
//! ternary matrices and scales. Shared by the converter's and the runtime's tests
//! (`#[path]`-included), so both prove the same checkpoints.

#![allow(dead_code)] // each including test uses part of it

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::path::Path;
use tern_convert::{hf_name, packed, unpack_matrix};
use tern_format::{Encoding, Shape, TernFile};

/// One checkpoint tensor, owned.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The published layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// microsoft/bitnet-b1.58-2B-4T: `BitNetForCausalLM`, `autobitlinear` offline
    /// (`y = dot · weight_scale / s_x`), sub-norms named `attn_sub_norm` / `ffn_sub_norm`.
    BitNet2B,
    /// Falcon3-*-1.58bit, Llama3-8B-1.58: `LlamaForCausalLM`, default `bitlinear`
    /// (`y = dot / (weight_scale · s_x)`), no sub-norms.
    LlamaBitLinear,
}

/// Every tensor of `dir/model.safetensors`.
pub fn read_tensors(dir: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Tensor { name, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes a checkpoint folder: `config`, `tensors`, and `src`'s tokenizer.json.
pub fn write_folder(dst: &Path, src: &Path, config: &Value, tensors: &[Tensor]) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    std::fs::write(dst.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn is_sub_norm(name: &str) -> bool {
    ["inner_attn_ln", "ffn_layernorm", "attn_sub_norm", "ffn_sub_norm"].iter().any(|s| name.contains(s))
}

/// `src`'s config.json with the architecture and `quantization_config` of `family`.
pub fn packed_config(src: &Path, family: Family) -> Value {
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let o = c.as_object_mut().unwrap();
    let (arch, model_type, q) = match family {
        Family::BitNet2B => (
            "BitNetForCausalLM",
            "bitnet",
            json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}),
        ),
        Family::LlamaBitLinear => ("LlamaForCausalLM", "llama", json!({"quant_method": "bitnet"})),
    };
    o.insert("architectures".into(), json!([arch]));
    o.insert("model_type".into(), json!(model_type));
    o.insert("quantization_config".into(), q);
    c
}

/// The master fixture `src` without its sub-norm tensors (a master-weight model of the
/// Llama family's shape).
pub fn without_sub_norms(src: &Path) -> Vec<Tensor> {
    read_tensors(src).into_iter().filter(|t| !is_sub_norm(&t.name)).collect()
}

/// The tensors of `src` in `family`'s packed layout, with the ternary weights and scales
/// `tern` (the conversion of `src`) holds: each projection as U8 [out/4, in] packed as
/// transformers' `pack_weights` does, and a `weight_scale` of `scale_dtype` (F32 or BF16)
/// holding β (BitNet2B) or 1/β (LlamaBitLinear), rounded once to that dtype.
pub fn packed_tensors(src: &Path, tern: &TernFile, family: Family, scale_dtype: Dtype) -> Vec<Tensor> {
    let mut out = Vec::new();
    for t in read_tensors(src) {
        if is_sub_norm(&t.name) {
            if family == Family::BitNet2B {
                let name = t.name.replace("inner_attn_ln", "attn_sub_norm").replace("ffn_layernorm", "ffn_sub_norm");
                out.push(Tensor { name, ..t });
            }
            continue;
        }
        let ternary = tern.tensors().iter().find(|i| i.encoding == Encoding::T2 && hf_name(&i.name).contains(&t.name));
        let Some(info) = ternary else {
            out.push(t);
            continue;
        };
        let Shape::Matrix { rows, cols } = info.shape else { unreachable!() };
        let (rows, cols) = (rows as usize, cols as usize);
        let w = unpack_matrix(tern.data(info), rows, cols).unwrap();
        let scale = match family {
            Family::BitNet2B => info.scale,
            Family::LlamaBitLinear => 1.0 / info.scale,
        };
        let data = match scale_dtype {
            Dtype::F32 => scale.to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f32(scale).to_le_bytes().to_vec(),
            other => panic!("scale dtype {other:?}"),
        };
        out.push(Tensor { name: format!("{}_scale", t.name), dtype: scale_dtype, shape: vec![1], data });
        out.push(Tensor {
            name: t.name,
            dtype: Dtype::U8,
            shape: vec![rows / 4, cols],
            data: packed::pack(&w, rows, cols),
        });
    }
    out
}
