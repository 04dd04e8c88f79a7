//! Hugging Face `config.json`, `generation_config.json` and `tokenizer_config.json` ->
//! [`ModelConfig`].
//!
//! Checked in huggingface/transformers: `models/llama/modeling_llama.py` (`LlamaAttention`
//! takes `head_dim` from the config when it has one, else hidden / heads; `attention_bias`
//! gives q/k/v/o a bias and `mlp_bias` gate/up/down); `models/bitnet/modular_bitnet.py`
//! (`BitNetForCausalLM` is Llama with `attn_sub_norm` before `o_proj` and `ffn_sub_norm`
//! before `down_proj`, and `hidden_act` `"relu2"`); `configuration_bitnet.py` (no `head_dim`
//! field, `tie_word_embeddings` defaults to false).

use crate::quant_config::{linear_norm_eps, weight_layout, WeightLayout};
use crate::tokenizer_config::read_chat_metadata;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use tern_format::{Activation, Arch, ChatMetadata, GenerationDefaults, LinearExtras, ModelConfig, MAX_EXTRA_EOS};

/// The fields of `config.json` that matter, as Hugging Face names them.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: Option<u64>,
    hidden_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    max_position_embeddings: Option<u64>,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    rope_scaling: Option<Value>,
    /// transformers 5's spelling of RoPE's settings: `{"rope_type", "rope_theta", ...}`.
    rope_parameters: Option<Value>,
    quantization_config: Option<Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
}

/// Architectures tern-convert knows: 1bitLLM's checkpoints say `BitnetForCausalLM`,
/// microsoft/bitnet-b1.58-2B-4T `BitNetForCausalLM`, and the Llama-architecture 1.58-bit
/// checkpoints (Falcon3-*-1.58bit, Llama3-8B-1.58) `LlamaForCausalLM`, which is BitNet only
/// with a `quantization_config` of `quant_method` `"bitnet"`.
const KNOWN_ARCHITECTURES: [&str; 3] = ["BitnetForCausalLM", "BitNetForCausalLM", "LlamaForCausalLM"];

/// The config, with what is resolved later against the tensors.
pub struct ParsedConfig {
    pub config: ModelConfig,
    /// `tie_word_embeddings` as written, if it is.
    pub tie_word_embeddings: Option<bool>,
    /// How the BitLinear weights are stored (from `quantization_config`).
    pub layout: WeightLayout,
}

/// Reads `config.json`, `generation_config.json` and `tokenizer_config.json` of `dir`.
pub fn read_config(dir: &Path) -> Result<ParsedConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let generation = read_generation_config(dir)?;
    let mut parsed = parse_config(&text, &path, generation.defaults)?;
    let c = &mut parsed.config;
    let gen_at = |field: &str| format!("{}: field {field}", dir.join("generation_config.json").display());
    // transformers' generate stops at generation_config.json's eos_token_id when it has one.
    if let Some(eos) = &generation.eos_token_id {
        (c.eos_id, c.extra_eos) = eos_ids(Some(eos), c.vocab_size, &gen_at("eos_token_id"))?;
    }
    // Some checkpoints (Falcon3's) name their BOS only there.
    if let (None, Some(bos)) = (c.bos_id, &generation.bos_token_id) {
        c.bos_id = Some(token_id(bos, c.vocab_size, &gen_at("bos_token_id"))?);
    }
    c.chat = read_chat_metadata(dir)?;
    Ok(parsed)
}

/// `eos_token_id` (null, an id, or a list of ids) as the first id and the others, in order
/// and without repeats; `at` names the field in errors.
fn eos_ids(v: Option<&Value>, vocab: u32, at: &str) -> Result<(Option<u32>, Vec<u32>)> {
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
    };
    let mut ids: Vec<u32> = Vec::new();
    for item in items {
        let id = token_id(item, vocab, at)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > 1 + MAX_EXTRA_EOS {
        bail!("{at}: {} end-of-sequence ids (a .tern file holds at most {})", ids.len(), 1 + MAX_EXTRA_EOS);
    }
    Ok((ids.first().copied(), ids.get(1..).unwrap_or_default().to_vec()))
}

/// One token id below `vocab`; `at` names the field in errors.
fn token_id(v: &Value, vocab: u32, at: &str) -> Result<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|&id| id < u64::from(vocab))
            .map(|id| id as u32)
            .with_context(|| format!("{at}: {n} is not a token id below vocab_size {vocab}")),
        other => bail!("{at}: {other} is not a token id"),
    }
}

/// Parses the text of a `config.json` (`path` only names it in errors).
pub fn parse_config(text: &str, path: &Path, generation: GenerationDefaults) -> Result<ParsedConfig> {
    let hf: HfConfig =
        serde_json::from_str(text).with_context(|| format!("{}: not a valid config.json", path.display()))?;
    let at = |field: &str| format!("{}: field {field}", path.display());

    if !hf.architectures.iter().any(|a| KNOWN_ARCHITECTURES.contains(&a.as_str())) {
        bail!(
            "{}: unknown architecture {:?} (model_type {:?}); tern-convert reads {}",
            at("architectures"),
            hf.architectures,
            hf.model_type.as_deref().unwrap_or("-"),
            KNOWN_ARCHITECTURES.join(", ")
        );
    }
    let layout = weight_layout(hf.quantization_config.as_ref(), path)?;
    let bitnet_quantized = hf.quantization_config.as_ref().is_some_and(|q| !q.is_null());
    if hf.architectures.iter().all(|a| a == "LlamaForCausalLM") && !bitnet_quantized {
        bail!(
            "{}: LlamaForCausalLM without a quantization_config is a full-precision Llama, not BitNet b1.58 \
             (the 1.58-bit Llama checkpoints have quantization_config {{\"quant_method\": \"bitnet\"}})",
            at("quantization_config")
        );
    }
    // Plain RoPE only: rope_scaling null (or of type "default"), as in every published BitNet.
    for (field, v) in [("rope_scaling", &hf.rope_scaling), ("rope_parameters", &hf.rope_parameters)] {
        let Some(v) = v.as_ref().filter(|v| !v.is_null()) else { continue };
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
        if kind != "default" {
            bail!("{}: RoPE scaling of type {kind:?} is not supported yet (only null or \"default\")", at(field));
        }
    }
    let rope_theta = hf.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
    // Biases: every projection of the attention (`attention_bias`) or of the MLP
    // (`mlp_bias`, which model_type "bitnet" ignores: its BitNetMLP has `bias=False`).
    let bitnet_mlp = hf.model_type.as_deref() == Some("bitnet");
    let linear = LinearExtras {
        norm_eps: linear_norm_eps(hf.quantization_config.as_ref(), path)?,
        attn_bias: hf.attention_bias == Some(true),
        mlp_bias: hf.mlp_bias == Some(true) && !bitnet_mlp,
    };
    let int = |field: &str, v: Option<u64>| -> Result<u32> {
        let v = v.with_context(|| format!("{}: missing (expected a positive integer)", at(field)))?;
        u32::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .with_context(|| format!("{}: {v} is not a positive 32-bit integer", at(field)))
    };
    let hidden = int("hidden_size", hf.hidden_size)?;
    let n_heads = int("num_attention_heads", hf.num_attention_heads)?;
    let n_kv_heads = match hf.num_key_value_heads {
        None => n_heads,
        v => int("num_key_value_heads", v)?,
    };
    let head_dim = match hf.head_dim {
        Some(_) => int("head_dim", hf.head_dim)?,
        None => {
            if hidden % n_heads != 0 {
                bail!(
                    "{}: hidden_size {hidden} is not divisible by num_attention_heads {n_heads} (and there is no head_dim)",
                    at("hidden_size")
                );
            }
            hidden / n_heads
        }
    };
    if n_heads % n_kv_heads != 0 {
        bail!(
            "{}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}",
            at("num_key_value_heads")
        );
    }
    let activation = match hf.hidden_act.as_deref() {
        None | Some("silu") => Activation::Silu,
        Some("relu2") => Activation::ReluSquared,
        Some(other) => bail!("{}: unsupported activation {other:?} (expected \"silu\" or \"relu2\")", at("hidden_act")),
    };
    let float = |field: &str, v: Option<f64>, default: f64| -> Result<f32> {
        let v = v.unwrap_or(default);
        if !(v.is_finite() && v > 0.0) {
            bail!("{}: {v} is not a positive number", at(field));
        }
        Ok(v as f32)
    };
    let vocab = int("vocab_size", hf.vocab_size)?;
    let token = |field: &str, v: &Option<Value>| -> Result<Option<u32>> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => token_id(v, vocab, &at(field)).map(Some),
        }
    };
    let (eos_id, extra_eos) = eos_ids(hf.eos_token_id.as_ref(), vocab, &at("eos_token_id"))?;
    let config = ModelConfig {
        arch: Arch::BitnetLlama,
        activation,
        // Placeholders: `plan` (lib.rs) sets the sub-norm flags from the checkpoint's tensors
        // and `tied_output` from them and tie_word_embeddings.
        attn_sub_norm: false,
        ffn_sub_norm: false,
        tied_output: true,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("intermediate_size", hf.intermediate_size)?,
        n_layers: int("num_hidden_layers", hf.num_hidden_layers)?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_positions: int("max_position_embeddings", hf.max_position_embeddings)?,
        rope_theta: float("rope_theta", rope_theta.or(hf.rope_theta), 10000.0)?,
        rms_eps: float("rms_norm_eps", hf.rms_norm_eps, 1e-5)?,
        bos_id: token("bos_token_id", &hf.bos_token_id)?,
        eos_id,
        extra_eos,
        pad_id: token("pad_token_id", &hf.pad_token_id)?,
        generation,
        scale_convention: layout.scale_convention(),
        weights_source: layout.source(),
        chat: ChatMetadata::default(),
        linear,
    };
    config.validate().with_context(|| format!("{}: inconsistent config", path.display()))?;
    Ok(ParsedConfig { config, tie_word_embeddings: hf.tie_word_embeddings, layout })
}

#[derive(Debug, Deserialize)]
struct HfGenerationConfig {
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_k: Option<u64>,
    top_p: Option<f64>,
    repetition_penalty: Option<f64>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

/// What `generation_config.json` contributes.
#[derive(Default)]
struct GenerationFile {
    defaults: GenerationDefaults,
    /// Its `eos_token_id` (an id or a list), which overrides config.json's.
    eos_token_id: Option<Value>,
    /// Its `bos_token_id`, used when config.json has none.
    bos_token_id: Option<Value>,
}

/// Sampling defaults and EOS ids from `generation_config.json`, if present; otherwise
/// tern's defaults.
fn read_generation_config(dir: &Path) -> Result<GenerationFile> {
    let path = dir.join("generation_config.json");
    let mut g = GenerationDefaults::default();
    if !path.exists() {
        return Ok(GenerationFile::default());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let hf: HfGenerationConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid generation_config.json", path.display()))?;
    if let Some(t) = hf.temperature {
        g.temperature = t as f32;
    }
    if let Some(k) = hf.top_k {
        g.top_k = u32::try_from(k).unwrap_or(0);
    }
    if let Some(p) = hf.top_p {
        g.top_p = p as f32;
    }
    if let Some(r) = hf.repetition_penalty {
        g.repeat_penalty = r as f32;
    }
    if hf.do_sample == Some(false) {
        g.temperature = 0.0;
    }
    g.validate().with_context(|| format!("{}: sampling defaults out of range", path.display()))?;
    let present = |v: Option<Value>| v.filter(|v| !v.is_null());
    Ok(GenerationFile { defaults: g, eos_token_id: present(hf.eos_token_id), bos_token_id: present(hf.bos_token_id) })
}
