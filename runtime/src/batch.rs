//! One forward step over the tokens of several sequences: the core of continuous batching.
//!
//! A step's rows are consecutive runs of tokens ([`Segment`]s), each of one sequence at
//! its own positions: a decoded token, or a chunk of a prompt. Every matrix product runs
//! once over all rows (a small GEMM: the weights are read once per step for every
//! sequence), the output projection once over the last row of each segment that wants
//! logits, and each layer's attention per sequence, on its rows, over its own KV cache
//! ([`Sequence`]). Quantization, products and rescales are per row, and attention per
//! sequence, so a row's result is the same bits whatever else is in the step.

use crate::attention::Attention;
use crate::model::{KvType, Model, Scratch};
use anyhow::{bail, Result};
use tern_format::ModelConfig;

/// What a sequence keeps between steps: its KV cache, for up to `max_seq` positions.
pub struct Sequence {
    attention: Attention,
    max_seq: usize,
}

impl Sequence {
    /// A sequence of up to `max_seq` positions (at most the model's), whose segments have
    /// up to `max_rows` tokens.
    pub fn new(config: &ModelConfig, max_seq: usize, max_rows: usize, kv_type: KvType) -> Result<Self> {
        if max_seq == 0 || max_seq > config.max_positions as usize {
            bail!("context of {max_seq} positions is outside 1..={} (the model's maximum)", config.max_positions);
        }
        Ok(Sequence { attention: Attention::new(config, max_seq, max_rows.clamp(1, max_seq), kv_type)?, max_seq })
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.attention.cache_bytes()
    }
}

/// Consecutive tokens of one sequence in a step, at positions `pos..pos + tokens.len()`.
pub struct Segment<'a> {
    pub seq: &'a mut Sequence,
    pub tokens: &'a [u32],
    pub pos: usize,
    /// Whether the logits after its last token are wanted (not for a prompt chunk that
    /// the prompt's next chunk follows).
    pub logits: bool,
}

/// The buffers of steps of up to `rows` rows in all.
pub struct Batch {
    scratch: Scratch,
    /// The step's tokens, all segments one after another.
    tokens: Vec<u32>,
}

impl Batch {
    pub fn new(config: &ModelConfig, rows: usize) -> Self {
        let scratch = Scratch::new(config, rows);
        Batch { tokens: Vec::with_capacity(scratch.rows()), scratch }
    }

    /// The most rows a step can hold.
    pub fn rows(&self) -> usize {
        self.scratch.rows()
    }

    /// Runs every segment's tokens in one pass and hands the logits after the last token
    /// of each segment that wants them to `logits(segment index, logits)`.
    pub fn step(
        &mut self,
        model: &Model,
        segments: &mut [Segment],
        logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.tokens.clear();
        for (i, s) in segments.iter().enumerate() {
            if s.tokens.is_empty() {
                bail!("batch step: segment {i} has no tokens");
            }
            if s.pos + s.tokens.len() > s.seq.max_seq {
                bail!(
                    "batch step: segment {i}'s positions {}..{} exceed its context of {} positions",
                    s.pos,
                    s.pos + s.tokens.len(),
                    s.seq.max_seq
                );
            }
            self.tokens.extend_from_slice(s.tokens);
        }
        let n = self.tokens.len();
        if n == 0 {
            return Ok(());
        }
        if n > self.scratch.rows() {
            bail!("batch step: {n} rows exceed the {} this batch was sized for", self.scratch.rows());
        }
        model.check_tokens(&self.tokens)?;
        model.embed_rows(&mut self.scratch, &self.tokens);
        for l in 0..model.n_layers() {
            model.layer(&mut self.scratch, l, n, &mut |kernels, l, q, k, v, out| {
                // Each segment's rows of q, k, v and out, in order.
                let (qd, kvd) = (q.len() / n, k.len() / n);
                let (mut q, mut k, mut v, mut out) = (q, k, v, out);
                for s in segments.iter_mut() {
                    let r = s.tokens.len();
                    let (qs, q_rest) = std::mem::take(&mut q).split_at_mut(r * qd);
                    let (ks, k_rest) = std::mem::take(&mut k).split_at_mut(r * kvd);
                    let (vs, v_rest) = v.split_at(r * kvd);
                    let (os, o_rest) = std::mem::take(&mut out).split_at_mut(r * qd);
                    s.seq.attention.forward(kernels, l, s.pos, qs, ks, vs, os);
                    (q, k, v, out) = (q_rest, k_rest, v_rest, o_rest);
                }
            });
        }
        // The logits of every segment that wants them, in one output projection.
        let last_rows = segments.iter().scan(0, |end, s| {
            *end += s.tokens.len();
            Some(s.logits.then_some(*end - 1))
        });
        let all = model.rows_logits(&mut self.scratch, last_rows.flatten());
        let wanted = segments.iter().enumerate().filter(|(_, s)| s.logits).map(|(i, _)| i);
        for (i, l) in wanted.zip(all.chunks_exact(model.config().vocab_size as usize)) {
            logits(i, l);
        }
        Ok(())
    }
}
