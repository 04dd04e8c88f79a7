//! The tensors a `.tern` file of a given config holds: names, encodings, shapes.
//!
//! These names are part of the format (SPEC.md, "Tensors"). Hugging Face names never
//! appear here: the converter maps them once.

use crate::{Encoding, ModelConfig, Shape};

pub const TOKEN_EMBD: &str = "token_embd";
pub const OUTPUT_NORM: &str = "output_norm";
pub const OUTPUT: &str = "output";

/// The tensors of one transformer block, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockTensor {
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnSubNorm,
    AttnOutput,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnSubNorm,
    FfnDown,
}

impl BlockTensor {
    pub const ALL: [BlockTensor; 11] = [
        BlockTensor::AttnNorm,
        BlockTensor::AttnQ,
        BlockTensor::AttnK,
        BlockTensor::AttnV,
        BlockTensor::AttnSubNorm,
        BlockTensor::AttnOutput,
        BlockTensor::FfnNorm,
        BlockTensor::FfnGate,
        BlockTensor::FfnUp,
        BlockTensor::FfnSubNorm,
        BlockTensor::FfnDown,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            BlockTensor::AttnNorm => "attn_norm",
            BlockTensor::AttnQ => "attn_q",
            BlockTensor::AttnK => "attn_k",
            BlockTensor::AttnV => "attn_v",
            BlockTensor::AttnSubNorm => "attn_sub_norm",
            BlockTensor::AttnOutput => "attn_output",
            BlockTensor::FfnNorm => "ffn_norm",
            BlockTensor::FfnGate => "ffn_gate",
            BlockTensor::FfnUp => "ffn_up",
            BlockTensor::FfnSubNorm => "ffn_sub_norm",
            BlockTensor::FfnDown => "ffn_down",
        }
    }

    /// The file name of this tensor in block `layer`.
    pub fn name(self, layer: u32) -> String {
        format!("blk.{layer}.{}", self.suffix())
    }

    /// Whether a model of this config has the tensor.
    pub fn present(self, c: &ModelConfig) -> bool {
        match self {
            BlockTensor::AttnSubNorm => c.attn_sub_norm,
            BlockTensor::FfnSubNorm => c.ffn_sub_norm,
            _ => true,
        }
    }

    /// Its shape for this config.
    pub fn shape(self, c: &ModelConfig) -> Shape {
        let (h, i, q, kv) =
            (u64::from(c.hidden_size), u64::from(c.intermediate_size), c.q_dim() as u64, c.kv_dim() as u64);
        let m = |rows, cols| Shape::Matrix { rows, cols };
        match self {
            BlockTensor::AttnNorm | BlockTensor::FfnNorm => Shape::Vector(h),
            BlockTensor::AttnSubNorm => Shape::Vector(q),
            BlockTensor::FfnSubNorm => Shape::Vector(i),
            BlockTensor::AttnQ => m(q, h),
            BlockTensor::AttnK | BlockTensor::AttnV => m(kv, h),
            BlockTensor::AttnOutput => m(h, q),
            BlockTensor::FfnGate | BlockTensor::FfnUp => m(i, h),
            BlockTensor::FfnDown => m(h, i),
        }
    }

    /// Whether this is a BitLinear projection (a ternary matrix).
    pub fn is_linear(self) -> bool {
        self.encoding() == Encoding::T2
    }

    /// Whether this projection adds a bias in a model of this config (format version 3).
    pub fn has_bias(self, c: &ModelConfig) -> bool {
        match self {
            BlockTensor::AttnQ | BlockTensor::AttnK | BlockTensor::AttnV | BlockTensor::AttnOutput => {
                c.linear.attn_bias
            }
            BlockTensor::FfnGate | BlockTensor::FfnUp | BlockTensor::FfnDown => c.linear.mlp_bias,
            _ => false,
        }
    }

    /// The file name of this projection's input norm gain in block `layer` (format version
    /// 3, flag `LINEAR_NORM`): `blk.L.<projection>_in_norm`, one f32 per input column.
    pub fn in_norm_name(self, layer: u32) -> String {
        format!("blk.{layer}.{}_in_norm", self.suffix())
    }

    /// The file name of this projection's bias in block `layer` (format version 3):
    /// `blk.L.<projection>_bias`, one f32 per output row.
    pub fn bias_name(self, layer: u32) -> String {
        format!("blk.{layer}.{}_bias", self.suffix())
    }

    /// Norm weights are f32; projections are ternary.
    pub fn encoding(self) -> Encoding {
        match self {
            BlockTensor::AttnNorm | BlockTensor::AttnSubNorm | BlockTensor::FfnNorm | BlockTensor::FfnSubNorm => {
                Encoding::F32
            }
            _ => Encoding::T2,
        }
    }
}

/// Encodings allowed for the embedding and output matrices.
pub const MATRIX_FLOAT: [Encoding; 5] = [Encoding::F16, Encoding::F32, Encoding::Q8, Encoding::Q6, Encoding::Q4];

/// One expected tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub name: String,
    pub shape: Shape,
    /// Encodings a reader accepts (the first is what tern-convert writes by default).
    pub encodings: Vec<Encoding>,
}

/// Every tensor a file of this config holds, in the order tern-convert writes them.
pub fn expected_tensors(c: &ModelConfig) -> Vec<Expected> {
    let (v, h) = (u64::from(c.vocab_size), u64::from(c.hidden_size));
    let matrix = Shape::Matrix { rows: v, cols: h };
    let mut out = vec![Expected { name: TOKEN_EMBD.into(), shape: matrix, encodings: MATRIX_FLOAT.to_vec() }];
    for layer in 0..c.n_layers {
        for t in BlockTensor::ALL.into_iter().filter(|t| t.present(c)) {
            let Shape::Matrix { rows, cols } = t.shape(c) else {
                out.push(Expected { name: t.name(layer), shape: t.shape(c), encodings: vec![t.encoding()] });
                continue;
            };
            let f32_vector = |name, n| Expected { name, shape: Shape::Vector(n), encodings: vec![Encoding::F32] };
            if c.linear.norm_eps.is_some() {
                out.push(f32_vector(t.in_norm_name(layer), cols));
            }
            out.push(Expected { name: t.name(layer), shape: t.shape(c), encodings: vec![t.encoding()] });
            if t.has_bias(c) {
                out.push(f32_vector(t.bias_name(layer), rows));
            }
        }
    }
    out.push(Expected { name: OUTPUT_NORM.into(), shape: Shape::Vector(h), encodings: vec![Encoding::F32] });
    if !c.tied_output {
        out.push(Expected { name: OUTPUT.into(), shape: matrix, encodings: MATRIX_FLOAT.to_vec() });
    }
    out
}
