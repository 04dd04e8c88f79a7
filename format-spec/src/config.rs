//! The model configuration carried in every `.tern` file.

use crate::layout::RawConfig;
use crate::FormatError;
use zerocopy::little_endian::{F32, U32};

/// Architecture family (SPEC.md, "Config").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama-shaped BitNet b1.58 (1bitLLM/bitnet_b1_58-*, microsoft/bitnet-b1.58-2B-4T):
    /// RMSNorm, RoPE, gated MLP, ternary BitLinear projections.
    BitnetLlama = 1,
}

/// The gate activation of the MLP: `act(gate(x)) * up(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu = 1,
    /// `relu(x)^2` (microsoft/bitnet-b1.58-2B-4T).
    ReluSquared = 2,
}

/// Config flag bits.
pub mod flags {
    /// An RMSNorm before `o_proj` (`inner_attn_ln` / `attn_sub_norm`).
    pub const ATTN_SUB_NORM: u32 = 1 << 0;
    /// An RMSNorm before `down_proj` (`ffn_layernorm` / `ffn_sub_norm`).
    pub const FFN_SUB_NORM: u32 = 1 << 1;
    /// The output projection is the token embedding (no `output` tensor).
    pub const TIED_OUTPUT: u32 = 1 << 2;
    pub const ALL: u32 = ATTN_SUB_NORM | FFN_SUB_NORM | TIED_OUTPUT;
}

/// Sampling defaults, from `generation_config.json` when the checkpoint has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationDefaults {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    /// 1 means no penalty.
    pub repeat_penalty: f32,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults { temperature: 0.8, top_k: 40, top_p: 0.95, repeat_penalty: 1.0 }
    }
}

/// Everything the runtime needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub activation: Activation,
    pub attn_sub_norm: bool,
    pub ffn_sub_norm: bool,
    pub tied_output: bool,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub max_positions: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub generation: GenerationDefaults,
}

/// Stored in place of an absent token id.
pub const NO_TOKEN: u32 = u32::MAX;

/// Upper bounds that keep every size derived from a config far from overflow.
/// They are far above any BitNet model published.
pub const MAX_DIM: u32 = 1 << 20;
pub const MAX_LAYERS: u32 = 4096;
pub const MAX_VOCAB: u32 = 1 << 24;

impl ModelConfig {
    /// Checks the fields against each other; every error names the field.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |field: &'static str, reason: String| Err(FormatError::Config { field, reason });
        let dims = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_DIM),
            ("n_kv_heads", self.n_kv_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("max_positions", self.max_positions, MAX_DIM),
        ];
        for (field, v, max) in dims {
            if v == 0 || v > max {
                return bad(field, format!("{v} is outside 1..={max}"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("n_kv_heads", format!("{} does not divide n_heads {}", self.n_kv_heads, self.n_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} is odd; RoPE rotates pairs", self.head_dim));
        }
        if u64::from(self.n_heads) * u64::from(self.head_dim) > u64::from(MAX_DIM) {
            return bad("head_dim", "n_heads × head_dim is too large".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta", format!("{} is not a positive number", self.rope_theta));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad("rms_eps", format!("{} is not a positive number", self.rms_eps));
        }
        for (field, id) in [("bos_id", self.bos_id), ("eos_id", self.eos_id), ("pad_id", self.pad_id)] {
            if let Some(id) = id {
                if id >= self.vocab_size {
                    return bad(field, format!("{id} is not below vocab_size {}", self.vocab_size));
                }
            }
        }
        let g = &self.generation;
        if !(g.temperature.is_finite() && g.temperature >= 0.0) {
            return bad("gen_temperature", format!("{} is not ≥ 0", g.temperature));
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad("gen_top_p", format!("{} is outside (0, 1]", g.top_p));
        }
        if !(g.repeat_penalty.is_finite() && g.repeat_penalty > 0.0) {
            return bad("gen_repeat_penalty", format!("{} is not > 0", g.repeat_penalty));
        }
        Ok(())
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        (self.n_heads * self.head_dim) as usize
    }

    /// Width of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        (self.n_kv_heads * self.head_dim) as usize
    }

    pub(crate) fn to_raw(&self) -> RawConfig {
        let mut f = 0;
        if self.attn_sub_norm {
            f |= flags::ATTN_SUB_NORM;
        }
        if self.ffn_sub_norm {
            f |= flags::FFN_SUB_NORM;
        }
        if self.tied_output {
            f |= flags::TIED_OUTPUT;
        }
        let id = |x: Option<u32>| U32::new(x.unwrap_or(NO_TOKEN));
        RawConfig {
            arch: U32::new(self.arch as u32),
            activation: U32::new(self.activation as u32),
            flags: U32::new(f),
            vocab_size: U32::new(self.vocab_size),
            hidden_size: U32::new(self.hidden_size),
            intermediate_size: U32::new(self.intermediate_size),
            n_layers: U32::new(self.n_layers),
            n_heads: U32::new(self.n_heads),
            n_kv_heads: U32::new(self.n_kv_heads),
            head_dim: U32::new(self.head_dim),
            max_positions: U32::new(self.max_positions),
            rope_theta: F32::new(self.rope_theta),
            rms_eps: F32::new(self.rms_eps),
            bos_id: id(self.bos_id),
            eos_id: id(self.eos_id),
            pad_id: id(self.pad_id),
            gen_temperature: F32::new(self.generation.temperature),
            gen_top_k: U32::new(self.generation.top_k),
            gen_top_p: F32::new(self.generation.top_p),
            gen_repeat_penalty: F32::new(self.generation.repeat_penalty),
            reserved: [0; 48],
        }
    }

    pub(crate) fn from_raw(raw: &RawConfig) -> Result<Self, FormatError> {
        let bad = |field: &'static str, reason: String| FormatError::Config { field, reason };
        let arch = match raw.arch.get() {
            1 => Arch::BitnetLlama,
            other => return Err(bad("arch", format!("unknown architecture code {other}"))),
        };
        let activation = match raw.activation.get() {
            1 => Activation::Silu,
            2 => Activation::ReluSquared,
            other => return Err(bad("activation", format!("unknown activation code {other}"))),
        };
        let f = raw.flags.get();
        if f & !flags::ALL != 0 {
            return Err(bad("flags", format!("unknown flag bits {:#x}", f & !flags::ALL)));
        }
        if raw.reserved.iter().any(|&b| b != 0) {
            return Err(bad("reserved", "reserved bytes are not zero".into()));
        }
        let id = |x: U32| (x.get() != NO_TOKEN).then_some(x.get());
        let config = ModelConfig {
            arch,
            activation,
            attn_sub_norm: f & flags::ATTN_SUB_NORM != 0,
            ffn_sub_norm: f & flags::FFN_SUB_NORM != 0,
            tied_output: f & flags::TIED_OUTPUT != 0,
            vocab_size: raw.vocab_size.get(),
            hidden_size: raw.hidden_size.get(),
            intermediate_size: raw.intermediate_size.get(),
            n_layers: raw.n_layers.get(),
            n_heads: raw.n_heads.get(),
            n_kv_heads: raw.n_kv_heads.get(),
            head_dim: raw.head_dim.get(),
            max_positions: raw.max_positions.get(),
            rope_theta: raw.rope_theta.get(),
            rms_eps: raw.rms_eps.get(),
            bos_id: id(raw.bos_id),
            eos_id: id(raw.eos_id),
            pad_id: id(raw.pad_id),
            generation: GenerationDefaults {
                temperature: raw.gen_temperature.get(),
                top_k: raw.gen_top_k.get(),
                top_p: raw.gen_top_p.get(),
                repeat_penalty: raw.gen_repeat_penalty.get(),
            },
        };
        config.validate()?;
        Ok(config)
    }
}
