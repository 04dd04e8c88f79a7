//! The model configuration carried in every `.tern` file.

use crate::layout::RawConfig;
use crate::metadata::ChatMetadata;
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
    /// Version 3: every BitLinear normalizes its own input (RMSNorm with its own gain,
    /// `blk.L.<linear>_in_norm`, epsilon `linear_norm_eps`) before quantizing it:
    /// transformers' `quantization_config.use_rms_norm`.
    pub const LINEAR_NORM: u32 = 1 << 3;
    /// Version 3: q/k/v/o carry a bias (`blk.L.<linear>_bias`): `attention_bias`.
    pub const ATTN_BIAS: u32 = 1 << 4;
    /// Version 3: gate/up/down carry a bias: `mlp_bias`.
    pub const MLP_BIAS: u32 = 1 << 5;
    pub const ALL: u32 = ATTN_SUB_NORM | FFN_SUB_NORM | TIED_OUTPUT | LINEAR_NORM | ATTN_BIAS | MLP_BIAS;
    /// The bits a file of format version 2 (or 1) may set.
    pub const BEFORE_V3: u32 = ATTN_SUB_NORM | FFN_SUB_NORM | TIED_OUTPUT;
}

/// What BitNetQuantConfig adds around each BitLinear (format version 3): an input norm of
/// its own and a bias. Both absent in every published BitNet b1.58 checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinearExtras {
    /// `Some(eps)`: each BitLinear applies an RMSNorm with its own gain and this epsilon to
    /// its input before quantizing it (`use_rms_norm`, `rms_norm_eps`).
    pub norm_eps: Option<f32>,
    /// q, k, v and o add a bias to their output (`attention_bias`).
    pub attn_bias: bool,
    /// gate, up and down add a bias to their output (`mlp_bias`).
    pub mlp_bias: bool,
}

/// How a ternary tensor's stored scale enters BitLinear's rescale (SPEC.md, "Scale convention").
///
/// The scale is stored as the checkpoint gave it; [`multiplier`](ScaleConvention::multiplier)
/// is the one place a reader turns it into the factor that multiplies `dot / s_x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleConvention {
    /// The stored scale is `β` and `y = dot · β / s_x`. tern-convert's own absmean
    /// quantization (`β = max(mean|W|, 1e-5)`), and transformers' `AutoBitLinear` in
    /// offline mode (`integrations/bitnet.py`, `AutoBitLinear.forward`:
    /// `output * self.weight_scale`).
    Multiply = 1,
    /// The stored scale is `s_w` and `y = dot / (s_w · s_x)`: transformers' `BitLinear`
    /// (`integrations/bitnet.py`, `BitLinear.post_quant_process`:
    /// `input / (input_scale * weight_scale)`).
    Divide = 2,
}

impl ScaleConvention {
    /// The factor `β` with `y = dot · β / s_x`, from a tensor's stored scale. Readers
    /// compute it here, once per tensor at load; for [`Divide`](ScaleConvention::Divide)
    /// it is the f32 reciprocal of the stored value.
    pub fn multiplier(self, stored: f32) -> f32 {
        match self {
            ScaleConvention::Multiply => stored,
            ScaleConvention::Divide => 1.0 / stored,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScaleConvention::Multiply => "multiply (y = dot · scale / s_x)",
            ScaleConvention::Divide => "divide (y = dot / (scale · s_x))",
        }
    }
}

/// Where a file's ternary weights came from: which path tern-convert took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsSource {
    /// Full-precision master weights (1bitLLM), ternarized by tern-convert with the
    /// absmean scale.
    Master = 1,
    /// Pre-packed by Hugging Face's BitNet quantization (`quant_method: "bitnet"`): the
    /// ternary values and each tensor's `weight_scale` are copied as given.
    Prepacked = 2,
    /// Imported from a bitnet.cpp I2_S GGUF file: the ternary values and each tensor's
    /// trailing f32 scale (which multiplies) are copied as given.
    I2sGguf = 3,
}

impl WeightsSource {
    pub fn name(self) -> &'static str {
        match self {
            WeightsSource::Master => "master weights, ternarized by tern-convert (absmean)",
            WeightsSource::Prepacked => "pre-packed ternary weights and weight_scale, copied as given",
            WeightsSource::I2sGguf => "I2_S GGUF (bitnet.cpp): ternary weights and per-tensor scale, copied as given",
        }
    }
}

/// Most end-of-sequence ids beside `eos_id` a file can hold.
pub const MAX_EXTRA_EOS: usize = 7;

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

impl GenerationDefaults {
    /// The range check of the sampling defaults (the only one: the converter calls it on
    /// `generation_config.json`, [`ModelConfig::validate`] on every file).
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |field: &'static str, reason: String| Err(FormatError::Config { field, reason });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("gen_temperature", format!("{} is not ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("gen_top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("gen_repeat_penalty", format!("{} is not > 0", self.repeat_penalty));
        }
        Ok(())
    }
}

/// Everything the runtime needs to know about the model: its shape (the config region),
/// and the chat metadata (the metadata region, SPEC.md §3a).
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
    /// The first end-of-sequence id; generation stops at it and at every `extra_eos` id.
    pub eos_id: Option<u32>,
    /// Further end-of-sequence ids (at most [`MAX_EXTRA_EOS`]; empty without `eos_id`).
    pub extra_eos: Vec<u32>,
    pub pad_id: Option<u32>,
    pub generation: GenerationDefaults,
    pub scale_convention: ScaleConvention,
    pub weights_source: WeightsSource,
    /// The chat template and special-token strings (empty for version-1 files).
    pub chat: ChatMetadata,
    /// Per-linear input norms and biases (none before version 3).
    pub linear: LinearExtras,
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
        if let Some(eps) = self.linear.norm_eps {
            if !(eps.is_finite() && eps > 0.0) {
                return bad("linear_norm_eps", format!("{eps} is not a positive number"));
            }
        }
        let ids = [("bos_id", self.bos_id), ("eos_id", self.eos_id), ("pad_id", self.pad_id)];
        for (field, id) in ids.into_iter().chain(self.extra_eos.iter().map(|&id| ("extra_eos", Some(id)))) {
            if let Some(id) = id {
                if id >= self.vocab_size {
                    return bad(field, format!("{id} is not below vocab_size {}", self.vocab_size));
                }
            }
        }
        if self.extra_eos.len() > MAX_EXTRA_EOS {
            return bad("extra_eos", format!("{} ids (at most {MAX_EXTRA_EOS})", self.extra_eos.len()));
        }
        if self.eos_id.is_none() && !self.extra_eos.is_empty() {
            return bad("extra_eos", "further EOS ids without an eos_id".into());
        }
        let all: Vec<u32> = self.eos_ids().collect();
        if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
            return bad("extra_eos", format!("{all:?} lists an id twice"));
        }
        self.generation.validate()
    }

    /// Every end-of-sequence id: `eos_id`, then `extra_eos`.
    pub fn eos_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eos_id.into_iter().chain(self.extra_eos.iter().copied())
    }

    /// Whether generation stops at `id`.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids().any(|e| e == id)
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
        for (on, bit) in [
            (self.linear.norm_eps.is_some(), flags::LINEAR_NORM),
            (self.linear.attn_bias, flags::ATTN_BIAS),
            (self.linear.mlp_bias, flags::MLP_BIAS),
        ] {
            if on {
                f |= bit;
            }
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
            scale_convention: U32::new(self.scale_convention as u32),
            weights_source: U32::new(self.weights_source as u32),
            extra_eos: std::array::from_fn(|i| U32::new(self.extra_eos.get(i).copied().unwrap_or(NO_TOKEN))),
            linear_norm_eps: F32::new(self.linear.norm_eps.unwrap_or(0.0)),
            reserved: [0; 8],
        }
    }

    /// The config of a file of format `version` (1, 2 or 3); `chat` comes from its metadata region.
    pub(crate) fn from_raw(raw: &RawConfig, version: u32, chat: ChatMetadata) -> Result<Self, FormatError> {
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
        if version < 3 && f & !flags::BEFORE_V3 != 0 {
            return Err(bad("flags", format!("bits {:#x} need format version 3", f & !flags::BEFORE_V3)));
        }
        if raw.reserved.iter().any(|&b| b != 0) {
            return Err(bad("reserved", "reserved bytes are not zero".into()));
        }
        // Version 3's linear_norm_eps: set exactly when the LINEAR_NORM flag is (before
        // version 3 these bytes were reserved, and the flag cannot be set).
        let linear_norm_eps = raw.linear_norm_eps.get();
        let norm_eps = match (f & flags::LINEAR_NORM != 0, linear_norm_eps.to_bits()) {
            (true, _) => Some(linear_norm_eps),
            (false, 0) => None,
            (false, _) if version < 3 => return Err(bad("reserved", "reserved bytes are not zero".into())),
            (false, _) => return Err(bad("linear_norm_eps", "set without the LINEAR_NORM flag".into())),
        };
        let id = |x: U32| (x.get() != NO_TOKEN).then_some(x.get());
        let (scale_convention, weights_source, extra_eos) = if version == 1 {
            // Version 1 had 48 reserved bytes here; its converter only ternarized master weights.
            let zero = raw.scale_convention.get() == 0
                && raw.weights_source.get() == 0
                && raw.extra_eos.iter().all(|e| e.get() == 0);
            if !zero {
                return Err(bad("reserved", "reserved bytes are not zero".into()));
            }
            (ScaleConvention::Multiply, WeightsSource::Master, Vec::new())
        } else {
            let scale = match raw.scale_convention.get() {
                1 => ScaleConvention::Multiply,
                2 => ScaleConvention::Divide,
                other => return Err(bad("scale_convention", format!("unknown scale convention code {other}"))),
            };
            let source = match raw.weights_source.get() {
                1 => WeightsSource::Master,
                2 => WeightsSource::Prepacked,
                3 => WeightsSource::I2sGguf,
                other => return Err(bad("weights_source", format!("unknown weights source code {other}"))),
            };
            let used = raw.extra_eos.iter().take_while(|e| e.get() != NO_TOKEN).count();
            if raw.extra_eos[used..].iter().any(|e| e.get() != NO_TOKEN) {
                return Err(bad("extra_eos", "an unused slot comes before a used one".into()));
            }
            (scale, source, raw.extra_eos[..used].iter().map(|e| e.get()).collect())
        };
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
            extra_eos,
            pad_id: id(raw.pad_id),
            generation: GenerationDefaults {
                temperature: raw.gen_temperature.get(),
                top_k: raw.gen_top_k.get(),
                top_p: raw.gen_top_p.get(),
                repeat_penalty: raw.gen_repeat_penalty.get(),
            },
            scale_convention,
            weights_source,
            chat,
            linear: LinearExtras { norm_eps, attn_bias: f & flags::ATTN_BIAS != 0, mlp_bias: f & flags::MLP_BIAS != 0 },
        };
        config.validate()?;
        Ok(config)
    }
}
