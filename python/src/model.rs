//! `tern._tern.Model`: a memory-mapped model with its tokenizer, shared by Python
//! threads (every method takes `&self`; each call has its own state and thread pool).

use crate::errors::{arg_error, count, to_py, token_ids};
use crate::stream::Generation;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;
use tern::args::Sampling;
use tern::chat_template::Message;
use tern::session::{self, Request, Session};
use tern::KvType;

/// What a `Model` shares with its running generations (which outlive a call).
pub struct Inner {
    pub session: Session,
    /// Threads of each call's pool.
    pub threads: usize,
    /// Positions a prompt and its continuation may use (at most the model's).
    pub n_ctx: usize,
}

impl Inner {
    /// Runs `f` with this model's thread count (a pool for the call, as the CLI has one
    /// for its run).
    pub fn with_threads<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        tern::pool::with_threads(self.threads, f).map_err(anyhow::Error::from)?
    }
}

/// A `.tern` model, memory-mapped (dropping the last reference unmaps the file).
#[pyclass(subclass, frozen, module = "tern._tern")]
pub struct Model {
    inner: Arc<Inner>,
}

#[pymethods]
impl Model {
    /// Maps and validates `path` and loads its tokenizer. `n_threads`: threads per call
    /// (default: the physical cores this process may use); `n_ctx`: positions a prompt and
    /// its continuation may use (default and maximum: the model's context).
    #[new]
    #[pyo3(signature = (path, n_threads = None, n_ctx = None))]
    fn new(py: Python<'_>, path: PathBuf, n_threads: Option<i64>, n_ctx: Option<i64>) -> PyResult<Self> {
        let threads = match n_threads {
            Some(n) => count("n_threads", n, 1)?,
            None => tern::cpus::default_threads(),
        };
        let session = py.detach(|| Session::open(&path, false)).map_err(|e| to_py(e, Some(&path)))?;
        let max = session.model.config().max_positions as usize;
        let n_ctx = match n_ctx {
            Some(n) => count("n_ctx", n, 1)?,
            None => max,
        };
        if n_ctx > max {
            return Err(arg_error(format!("n_ctx {n_ctx} is more than the model's context of {max} positions")));
        }
        Ok(Model { inner: Arc::new(Inner { session, threads, n_ctx }) })
    }

    /// The model's config as `tern inspect` shows it (a dict).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = session::config_json(self.inner.session.model.file()).to_string();
        py.import("json")?.call_method1("loads", (json,))
    }

    /// The path the model was opened from.
    #[getter]
    fn path(&self) -> String {
        self.inner.session.model.file().path().display().to_string()
    }

    /// The vocabulary size (the number of logits per position).
    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.session.model.config().vocab_size as usize
    }

    /// Positions a prompt and its continuation may use.
    #[getter]
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx
    }

    /// The beginning-of-sequence token id, or None.
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.inner.session.model.config().bos_id
    }

    /// The end-of-sequence token ids (generation stops at any of them).
    #[getter]
    fn eos_ids(&self) -> Vec<u32> {
        session::eos_ids(self.inner.session.model.config())
    }

    /// The chat template stored in the file, or None (then chat uses the plain fallback).
    #[getter]
    fn chat_template(&self) -> Option<String> {
        session::chat_template(self.inner.session.model.file()).map(str::to_string)
    }

    /// The token ids of `text`. With `add_bos` (default), exactly what `tern tokenize`
    /// prints (the tokenizer's special tokens, BOS, added); without, the plain tokens.
    #[pyo3(signature = (text, add_bos = true))]
    fn tokenize(&self, py: Python<'_>, text: &str, add_bos: bool) -> PyResult<Vec<u32>> {
        let tok = &self.inner.session.tok;
        py.detach(|| if add_bos { tok.encode(text) } else { tok.encode_plain(text) }).map_err(|e| to_py(e, None))
    }

    /// The text of token ids (special tokens skipped), as the tokenizers library decodes it.
    fn detokenize(&self, py: Python<'_>, ids: Vec<i64>) -> PyResult<String> {
        let ids = token_ids(&ids, self.inner.session.model.config())?;
        let tok = &self.inner.session.tok;
        py.detach(|| tok.decode(&ids)).map_err(|e| to_py(e, None))
    }

    /// The logits after each token of `ids` (run as one prompt from position 0): a float32
    /// array [len(ids), n_vocab], bit-identical to `tern logits --all`; with `all=False`,
    /// the last row only [n_vocab].
    #[pyo3(signature = (ids, all = true))]
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<i64>, all: bool) -> PyResult<Bound<'py, PyAny>> {
        let ids = token_ids(&ids, self.inner.session.model.config())?;
        let inner = &self.inner;
        let l = py
            .detach(|| inner.with_threads(|| inner.session.logits(&ids, all, inner.n_ctx)))
            .map_err(|e| to_py(e, None))?;
        let flat = PyArray1::from_vec(py, l.data);
        Ok(if all { flat.reshape([l.rows, l.vocab])?.into_any() } else { flat.into_any() })
    }

    /// Starts generating a continuation of `prompt`; returns the running generation, an
    /// iterator of text pieces (`tern.Model.generate` and the completion calls build on it).
    #[pyo3(signature = (prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, seed, stop))]
    #[allow(clippy::too_many_arguments)]
    fn _generate(
        &self,
        prompt: Prompt,
        max_tokens: i64,
        temperature: f32,
        top_k: i64,
        top_p: f32,
        repeat_penalty: f32,
        seed: Option<u64>,
        stop: Vec<String>,
    ) -> PyResult<Generation> {
        let sampling = Sampling {
            temperature: Some(temperature),
            top_k: Some(count("top_k", top_k, 0)?),
            top_p: Some(top_p),
            repeat_penalty: Some(repeat_penalty),
        };
        let max_new = count("max_tokens", max_tokens, 0)?;
        let req = Request { max_new, sampling, seed, stop, kv_type: KvType::F32 };
        let s = &self.inner.session;
        let prepared = match prompt {
            Prompt::Text(text) => s.prepare(&text, &req, self.inner.n_ctx),
            Prompt::Ids(ids) => s.prepare_ids(ids, &req, self.inner.n_ctx),
        };
        let (ids, opts) = prepared.map_err(|e| to_py(e, None))?;
        Generation::start(self.inner.clone(), ids, opts).map_err(|e| to_py(e, None))
    }

    /// The prompt's token ids and stop strings for a chat: `messages` rendered with the
    /// model's chat template, or the plain fallback without one.
    fn _chat_prompt(&self, messages: Vec<Bound<'_, PyDict>>) -> PyResult<(Vec<u32>, Vec<String>)> {
        let mut msgs = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let field = |k: &str| -> PyResult<String> {
                m.get_item(k)?
                    .ok_or_else(|| arg_error(format!("messages[{i}] has no {k:?}")))?
                    .extract()
                    .map_err(|_| arg_error(format!("messages[{i}][{k:?}] is not a string")))
            };
            msgs.push(Message { role: field("role")?, content: field("content")? });
        }
        let s = &self.inner.session;
        tern::chat_template::prompt_ids(&s.model, &s.tok, &msgs).map_err(|e| to_py(e, None))
    }

    /// Positions a prompt of `prompt` would leave for its continuation (for chat's
    /// `max_tokens=None`: until EOS or the end of the context).
    fn _room(&self, py: Python<'_>, prompt: Prompt) -> PyResult<usize> {
        let s = &self.inner.session;
        let n = match prompt {
            Prompt::Text(text) => py.detach(|| s.prompt_ids(&text)).map_err(|e| to_py(e, None))?.len(),
            Prompt::Ids(ids) => ids.len(),
        };
        Ok(self.inner.n_ctx.saturating_sub(n))
    }
}

/// A prompt as text (tokenized with BOS, as `tern generate` does) or as token ids (a
/// rendered chat, whose special tokens come from its template alone).
#[derive(FromPyObject)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}
