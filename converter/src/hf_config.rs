//! Hugging Face `config.json` and `generation_config.json` -> [`ModelConfig`].

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tern_format::{Activation, Arch, GenerationDefaults, ModelConfig};

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
    rope_scaling: Option<serde_json::Value>,
}

/// Architectures tern-convert knows. 1bitLLM's checkpoints say `BitnetForCausalLM`.
const KNOWN_ARCHITECTURES: [&str; 2] = ["BitnetForCausalLM", "BitNetForCausalLM"];

/// What the config says about the output projection, resolved later against the tensors.
pub struct ParsedConfig {
    pub config: ModelConfig,
    /// `tie_word_embeddings` as written, if it is.
    pub tie_word_embeddings: Option<bool>,
}

pub fn read_config(dir: &Path) -> Result<ParsedConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_config(&text, &path, read_generation_config(dir)?)
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
            KNOWN_ARCHITECTURES.join(" or ")
        );
    }
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        bail!("{}: RoPE scaling is not supported yet", at("rope_scaling"));
    }
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
    let token = |field: &str, v: &Option<serde_json::Value>| -> Result<Option<u32>> {
        // eos_token_id may be a list; the first entry is the one generation stops at.
        let v = match v {
            Some(serde_json::Value::Array(a)) => a.first().cloned(),
            other => other.clone(),
        };
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => {
                let id = n.as_u64().filter(|&id| id < u64::from(vocab));
                id.map(|id| Some(id as u32))
                    .with_context(|| format!("{}: {n} is not a token id below vocab_size {vocab}", at(field)))
            }
            Some(other) => bail!("{}: {other} is not a token id", at(field)),
        }
    };
    let config = ModelConfig {
        arch: Arch::BitnetLlama,
        activation,
        // Sub-norm presence is decided from the tensors (convert.rs); both exist in 1bitLLM.
        attn_sub_norm: true,
        ffn_sub_norm: true,
        tied_output: true,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("intermediate_size", hf.intermediate_size)?,
        n_layers: int("num_hidden_layers", hf.num_hidden_layers)?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_positions: int("max_position_embeddings", hf.max_position_embeddings)?,
        rope_theta: float("rope_theta", hf.rope_theta, 10000.0)?,
        rms_eps: float("rms_norm_eps", hf.rms_norm_eps, 1e-5)?,
        bos_id: token("bos_token_id", &hf.bos_token_id)?,
        eos_id: token("eos_token_id", &hf.eos_token_id)?,
        pad_id: token("pad_token_id", &hf.pad_token_id)?,
        generation,
    };
    config.validate().with_context(|| format!("{}: inconsistent config", path.display()))?;
    Ok(ParsedConfig { config, tie_word_embeddings: hf.tie_word_embeddings })
}

#[derive(Debug, Deserialize)]
struct HfGenerationConfig {
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_k: Option<u64>,
    top_p: Option<f64>,
    repetition_penalty: Option<f64>,
}

/// Sampling defaults from `generation_config.json`, if present; otherwise tern's defaults.
fn read_generation_config(dir: &Path) -> Result<GenerationDefaults> {
    let path = dir.join("generation_config.json");
    let mut g = GenerationDefaults::default();
    if !path.exists() {
        return Ok(g);
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
    let ok = g.temperature.is_finite()
        && g.temperature >= 0.0
        && g.top_p > 0.0
        && g.top_p <= 1.0
        && g.repeat_penalty.is_finite()
        && g.repeat_penalty > 0.0;
    if !ok {
        bail!("{}: sampling values out of range: {g:?}", path.display());
    }
    Ok(g)
}
