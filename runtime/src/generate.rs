//! Text generation: prompt processing, then sample / decode / stream one token at a time.

use crate::model::{KvType, Model, State};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{Detokenizer, TextTokenizer};
use anyhow::{bail, Result};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new: usize,
    pub sampler: SamplerConfig,
    pub seed: u64,
    /// Generation stops when the text contains one of these (which is not printed).
    pub stop: Vec<String>,
    pub kv_type: KvType,
    /// Prompt chunk size (`-b`): the logits do not depend on it.
    pub batch: usize,
}

/// Timing of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub gen_tokens: usize,
    pub gen_secs: f64,
    pub kv_cache_bytes: usize,
    /// Why generation ended.
    pub finish: Finish,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Finish {
    /// The model sampled its end-of-sequence token.
    #[default]
    Eos,
    /// The text reached a stop string.
    Stop,
    /// `max_new` tokens were generated.
    Length,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }

    pub fn gen_tps(&self) -> f64 {
        self.gen_tokens as f64 / self.gen_secs.max(1e-9)
    }
}

/// An `emit` error that ends generation early (the CLI's Ctrl-C): `generate` then returns
/// its stats, as after a stop string.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Checks that a prompt of `prompt_len` tokens plus `max_new` fits the model's context.
pub fn check_context(model: &Model, prompt_len: usize, max_new: usize) -> Result<usize> {
    Ok(crate::args::check_context(prompt_len, max_new, model.config().max_positions as usize)?)
}

/// Holds back text that could be the start of a stop string until it is decided.
pub(crate) struct StopFilter<'s> {
    stops: &'s [String],
    pending: String,
}

impl<'s> StopFilter<'s> {
    pub(crate) fn new(stops: &'s [String]) -> Self {
        StopFilter { stops, pending: String::new() }
    }

    /// A filter that goes on from text held back earlier (a server keeps only that between steps).
    pub(crate) fn resume(stops: &'s [String], pending: String) -> Self {
        StopFilter { stops, pending }
    }

    /// The text held back, to resume from.
    pub(crate) fn into_pending(self) -> String {
        self.pending
    }

    /// The text held back so far.
    pub(crate) fn pending(&self) -> &str {
        &self.pending
    }

    /// Adds text; returns (text safe to print, whether a stop string was hit).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The longest suffix of `pending` that begins some stop string stays pending.
        let mut keep_from = self.pending.len();
        for (i, _) in self.pending.char_indices().rev() {
            let tail = &self.pending[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
            }
        }
        let out = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        (out, false)
    }
}

/// Generates a continuation of `prompt` (token ids), streaming text pieces to `emit`.
pub fn generate(
    model: &Model,
    tok: &TextTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    emit: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenStats> {
    if prompt.is_empty() {
        bail!("the prompt has no tokens (and the model has no BOS token to start from)");
    }
    let c = model.config();
    let need = check_context(model, prompt.len(), opts.max_new)?;
    let mut st = State::with_kv(c, need, opts.batch, opts.kv_type)?;
    let mut stats = GenStats { prompt_tokens: prompt.len(), kv_cache_bytes: st.kv_cache_bytes(), ..Default::default() };
    let t0 = Instant::now();
    let prompt_logits = model.forward(&mut st, prompt, 0)?;
    stats.prompt_secs = t0.elapsed().as_secs_f64();
    // With -n 0 the prompt still runs (as in llama.cpp), so its timing is real.
    if opts.max_new == 0 {
        stats.finish = Finish::Length;
        return Ok(stats);
    }
    let mut logits = prompt_logits.to_vec();
    let mut sampler = Sampler::new(opts.sampler, opts.seed, c.vocab_size as usize);
    let mut history = Vec::with_capacity(prompt.len() + opts.max_new);
    history.extend_from_slice(prompt);
    let mut detok = Detokenizer::new(tok, prompt);
    let mut stop = StopFilter::new(&opts.stop);

    let t1 = Instant::now();
    let mut stopped = false;
    loop {
        let next = sampler.sample(&mut logits, &history);
        stats.gen_tokens += 1;
        if c.is_eos(next) {
            break;
        }
        history.push(next);
        let (text, hit) = stop.push(&detok.push(next)?);
        let interrupted = match emit(&text) {
            Err(e) if e.is::<Interrupted>() => true,
            r => r.map(|()| false)?,
        };
        if hit || interrupted {
            stopped = true;
            break;
        }
        if stats.gen_tokens == opts.max_new {
            stats.finish = Finish::Length;
            break;
        }
        logits.copy_from_slice(model.forward(&mut st, &[next], history.len() - 1)?);
    }
    if stopped {
        stats.finish = Finish::Stop;
    } else {
        let (text, _) = stop.push(&detok.flush()?);
        emit(&text)?;
        emit(&stop.pending)?;
    }
    stats.gen_secs = t1.elapsed().as_secs_f64();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let stops = vec!["STOP".to_string()];
        let mut f = StopFilter { stops: &stops, pending: String::new() };
        assert_eq!(f.push("Hello S"), ("Hello ".into(), false));
        assert_eq!(f.push("T"), ("".into(), false));
        assert_eq!(f.push("ar"), ("STar".into(), false));
        assert_eq!(f.push("xSTOPy"), ("x".into(), true));
    }
}
