//! A GGUF file's metadata -> tern's [`ModelConfig`].
//!
//! Architectures, as checked in ikawrakow/ik_llama.cpp (which loads bitnet.cpp's files):
//! `src/llama-arch.cpp` names `bitnet-b1.58` and `bitnet-25`; `src/graphs/build_bitnet.cpp`,
//! `build_bitnet_158`, runs them with sub-norms and `LLM_FFN_RELU_SQR`; `src/llama.cpp`,
//! `llama_rope_type`, gives them NEOX RoPE (q/k rows as Hugging Face stores them), and
//! `create_bitnet2_tensors` (`src/llama-load-tensors.cpp`) makes `output.weight` optional
//! (tied when absent). `llama` (Falcon-E's files) is SiLU with llama.cpp's interleaved RoPE,
//! for which `convert_hf_to_gguf.py` permutes the q/k rows (`LlamaModel.permute`).
//! Keys are `{arch}.{embedding_length, block_count, feed_forward_length, context_length,
//! attention.head_count, attention.head_count_kv, attention.key_length,
//! attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count, vocab_size}`
//! (llama.cpp `gguf-py/gguf/constants.py`, `class Keys`).

use super::container::{Gguf, Value};
use anyhow::{bail, Context, Result};
use tern_format::{
    Activation, Arch, ChatMetadata, GenerationDefaults, LinearExtras, ModelConfig, ScaleConvention, WeightsSource,
};

/// The architectures this importer reads, and what follows from each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArch {
    /// `bitnet-b1.58` or `bitnet-25`: relu², NEOX RoPE (rows as Hugging Face has them).
    Bitnet,
    /// `llama` with I2_S linears (Falcon-E): SiLU, q/k rows permuted by llama.cpp's converter.
    Llama,
}

impl GgufArch {
    pub fn permuted_qk(self) -> bool {
        self == GgufArch::Llama
    }
}

/// The architecture name and what it implies; others are refused by name.
pub fn arch(g: &Gguf) -> Result<(String, GgufArch)> {
    let name = match g.get("general.architecture") {
        Some(Value::Str(s)) => s.clone(),
        Some(v) => bail!("metadata key general.architecture: {} (expected a string)", v.kind()),
        None => bail!("metadata key general.architecture: missing"),
    };
    let a = match name.as_str() {
        "bitnet-b1.58" | "bitnet-25" => GgufArch::Bitnet,
        "llama" => GgufArch::Llama,
        other => bail!(
            "general.architecture {other:?} is not supported; tern-convert imports bitnet.cpp's \"bitnet-b1.58\" and \
             \"bitnet-25\" files and \"llama\" files with I2_S linears (Falcon-E): convert from the Hugging Face \
             checkpoint instead"
        ),
    };
    Ok((name, a))
}

/// The config the metadata describes. Sub-norm and tied-output flags, EOS ids and the chat
/// metadata are placeholders that the caller fills from the tensors and the tokenizer.
pub fn model_config(g: &Gguf, arch_name: &str, arch: GgufArch, vocab: u32) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch_name}.{k}");
    let get = |k: &str| g.get(&key(k));
    let int = |k: &str, default: Option<u32>| -> Result<u32> {
        match get(k) {
            None => default.with_context(|| format!("metadata key {}: missing", key(k))),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v > 0)
                .with_context(|| format!("metadata key {}: {v:?} is not a positive 32-bit integer", key(k))),
        }
    };
    let float = |k: &str, default: Option<f64>| -> Result<f32> {
        let v = match get(k) {
            None => default.with_context(|| format!("metadata key {}: missing", key(k)))?,
            Some(v) => v.as_f64().with_context(|| format!("metadata key {}: {} is not a number", key(k), v.kind()))?,
        };
        if !(v.is_finite() && v > 0.0) {
            bail!("metadata key {}: {v} is not a positive number", key(k));
        }
        Ok(v as f32)
    };
    if let Some(t) = get("rope.scaling.type").and_then(Value::as_str).filter(|t| *t != "none") {
        bail!("metadata key {}: RoPE scaling {t:?} is not supported", key("rope.scaling.type"));
    }
    let hidden = int("embedding_length", None)?;
    let n_heads = int("attention.head_count", None)?;
    let n_kv_heads = int("attention.head_count_kv", Some(n_heads))?;
    let head_dim = match get("attention.key_length") {
        Some(_) => int("attention.key_length", None)?,
        None if hidden.is_multiple_of(n_heads) => hidden / n_heads,
        None => bail!(
            "metadata key {}: missing, and embedding_length {hidden} is not divisible by head_count {n_heads}",
            key("attention.key_length")
        ),
    };
    if let Some(rot) = get("rope.dimension_count") {
        if rot.as_u64() != Some(u64::from(head_dim)) {
            bail!(
                "metadata key {}: {rot:?}; tern rotates whole heads of {head_dim} (partial RoPE is not supported)",
                key("rope.dimension_count")
            );
        }
    }
    if let Some(vlen) = get("attention.value_length") {
        if vlen.as_u64() != Some(u64::from(head_dim)) {
            bail!("metadata key {}: {vlen:?}, expected the key length {head_dim}", key("attention.value_length"));
        }
    }
    let config = ModelConfig {
        arch: Arch::BitnetLlama,
        activation: match arch {
            GgufArch::Bitnet => Activation::ReluSquared,
            GgufArch::Llama => Activation::Silu,
        },
        attn_sub_norm: false,
        ffn_sub_norm: false,
        tied_output: true,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("feed_forward_length", None)?,
        n_layers: int("block_count", None)?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_positions: int("context_length", None)?,
        rope_theta: float("rope.freq_base", Some(10000.0))?,
        rms_eps: float("attention.layer_norm_rms_epsilon", None)?,
        bos_id: None,
        eos_id: None,
        extra_eos: Vec::new(),
        pad_id: None,
        generation: GenerationDefaults::default(),
        scale_convention: ScaleConvention::Multiply,
        weights_source: WeightsSource::I2sGguf,
        chat: ChatMetadata::default(),
        // bitnet.cpp's I2_S files carry no per-linear norms or biases (mod.rs refuses such tensors).
        linear: LinearExtras::default(),
    };
    config.validate().context("the GGUF metadata describes an inconsistent model")?;
    Ok(config)
}
