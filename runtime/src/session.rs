//! A model file opened for requests, and the requests the CLI and the Python binding
//! share: the same function computes both, so `tern logits` and `Model.logits`, or
//! `tern generate` and `Model.generate`, cannot differ.

use crate::args::{self, ArgError, Sampling};
use crate::generate::GenerateOptions;
use crate::model::{KvType, Model, State, DEFAULT_BATCH};
use crate::tokenizer::TextTokenizer;
use crate::ModelFile;
use anyhow::{Context, Result};
use std::path::Path;
use tern_format::ModelConfig;

/// A model and the tokenizer embedded in its file.
pub struct Session {
    pub model: Model,
    pub tok: TextTokenizer,
}

/// The end-of-sequence ids of a model: generation stops at any of them.
pub fn eos_ids(config: &ModelConfig) -> Vec<u32> {
    config.eos_ids().collect()
}

/// The chat template stored in the file, if any (without one, chat uses
/// [`crate::chat_template::FALLBACK_TEMPLATE`]).
pub fn chat_template(file: &ModelFile) -> Option<&str> {
    file.config().chat.chat_template.as_deref()
}

/// What to generate: the caller's settings before they are checked.
#[derive(Debug, Clone)]
pub struct Request {
    /// Tokens to generate at most.
    pub max_new: usize,
    pub sampling: Sampling,
    /// `None`: from the clock.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub kv_type: KvType,
}

/// Logits of a run of tokens: `rows` rows of `vocab` values, one per position (or only the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Session {
    /// Maps and validates `path` (every tensor checksum too with `verify`) and loads its tokenizer.
    pub fn open(path: &Path, verify: bool) -> Result<Self> {
        let file = ModelFile::open(path)?;
        if verify {
            file.verify()?;
        }
        let tok = TextTokenizer::from_json(file.tokenizer_json(), file.config().vocab_size)
            .with_context(|| format!("{}: embedded tokenizer", path.display()))?;
        Ok(Session { model: Model::from_file(file)?, tok })
    }

    /// The prompt's token ids (with BOS, as Hugging Face's post-processor adds it); an
    /// empty prompt is BOS alone.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = self.tok.encode(prompt)?;
        if ids.is_empty() {
            ids.extend(self.model.config().bos_id);
        }
        Ok(ids)
    }

    /// Checks `req` for a prompt within a context of `ctx` positions and returns the
    /// prompt's ids and the options for [`crate::generate::generate`].
    pub fn prepare(&self, prompt: &str, req: &Request, ctx: usize) -> Result<(Vec<u32>, GenerateOptions)> {
        let ids = self.prompt_ids(prompt)?;
        self.prepare_ids(ids, req, ctx)
    }

    /// [`prepare`](Session::prepare) for a prompt given as token ids (a rendered chat).
    pub fn prepare_ids(&self, ids: Vec<u32>, req: &Request, ctx: usize) -> Result<(Vec<u32>, GenerateOptions)> {
        let sampler = req.sampling.resolve(&self.model.config().generation)?;
        args::check_stops(&req.stop)?;
        args::check_tokens(self.model.config(), &ids)?;
        args::check_context(ids.len(), req.max_new, ctx)?;
        let opts = GenerateOptions {
            max_new: req.max_new,
            sampler,
            seed: args::seed_or_clock(req.seed),
            stop: req.stop.clone(),
            kv_type: req.kv_type,
            batch: DEFAULT_BATCH,
        };
        Ok((ids, opts))
    }

    /// The logits after each of `tokens` (`all`), or after the last only, within a
    /// context of `ctx` positions.
    pub fn logits(&self, tokens: &[u32], all: bool, ctx: usize) -> Result<Logits> {
        logits(&self.model, tokens, all, ctx, DEFAULT_BATCH)
    }
}

/// The logits after each of `tokens` (`all`), or after the last only: what `tern logits`
/// prints. The tokens run as one prompt from position 0 within a context of `ctx`, in
/// chunks of `batch` (which changes no logit).
pub fn logits(model: &Model, tokens: &[u32], all: bool, ctx: usize, batch: usize) -> Result<Logits> {
    if tokens.is_empty() {
        return Err(ArgError("--tokens needs at least one token id".into()).into());
    }
    args::check_tokens(model.config(), tokens)?;
    args::check_context(tokens.len(), 0, ctx)?;
    let vocab = model.config().vocab_size as usize;
    let mut st = State::new(model.config(), tokens.len(), batch)?;
    let data = if all {
        let mut data = Vec::with_capacity(tokens.len() * vocab);
        model.forward_all(&mut st, tokens, 0, &mut |_, l| data.extend_from_slice(l))?;
        data
    } else {
        model.forward(&mut st, tokens, 0)?.to_vec()
    };
    Ok(Logits { rows: data.len() / vocab, vocab, data })
}

/// The file's config as `tern inspect` shows it, as JSON (the Python binding's
/// `Model.config`).
pub fn config_json(file: &ModelFile) -> serde_json::Value {
    let c = file.config();
    let g = c.generation;
    serde_json::json!({
        "format_version": tern_format::VERSION,
        "file_bytes": file.len(),
        "arch": format!("{:?}", c.arch),
        "activation": format!("{:?}", c.activation),
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "max_positions": c.max_positions,
        "rope_theta": c.rope_theta,
        "rms_eps": c.rms_eps,
        "attn_sub_norm": c.attn_sub_norm,
        "ffn_sub_norm": c.ffn_sub_norm,
        "tied_output": c.tied_output,
        "linear_norm_eps": c.linear.norm_eps,
        "attn_bias": c.linear.attn_bias,
        "mlp_bias": c.linear.mlp_bias,
        "bos_id": c.bos_id,
        "eos_id": c.eos_id,
        "pad_id": c.pad_id,
        "generation": {
            "temperature": g.temperature,
            "top_k": g.top_k,
            "top_p": g.top_p,
            "repeat_penalty": g.repeat_penalty,
        },
        "tokenizer_bytes": file.tokenizer_json().len(),
    })
}
