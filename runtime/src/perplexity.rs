//! Token-level perplexity of a text.
//!
//! Windowing (the same as `scripts/train_tiny.py`): the whole text is tokenized without
//! special tokens, split into non-overlapping chunks of `ctx - 1` tokens, and each chunk
//! is run after a BOS token, so that every token of the text is scored exactly once, from
//! the tokens before it in its chunk.

use crate::model::{KvType, Model, State};
use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub nats_per_token: f64,
    pub tokens: usize,
}

/// `-log softmax(logits)[target]`, in f64.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    f64::from(max) + sum.ln() - f64::from(logits[target as usize])
}

/// Scores `ids` (the text's tokens, no BOS) in windows of `ctx` positions, with a KV cache
/// of `kv`, in prompt chunks of `batch` (which changes no logit); `progress(tokens_scored)`
/// is called after each window.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    ctx: usize,
    kv: KvType,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Perplexity> {
    let c = model.config();
    let Some(bos) = c.bos_id else { bail!("the model has no BOS token, which this windowing starts each window with") };
    if ctx < 2 || ctx > c.max_positions as usize {
        bail!("--ctx {ctx} is outside 2..={} (the model's context)", c.max_positions);
    }
    if ids.is_empty() {
        bail!("the text has no tokens to score");
    }
    let mut st = State::with_kv(c, ctx, batch, kv)?;
    let mut input = Vec::with_capacity(ctx);
    let (mut total, mut scored) = (0.0f64, 0usize);
    for chunk in ids.chunks(ctx - 1) {
        input.clear();
        input.push(bos);
        input.extend_from_slice(&chunk[..chunk.len() - 1]);
        model.forward_all(&mut st, &input, 0, &mut |p, logits| total += nll(logits, chunk[p]))?;
        scored += chunk.len();
        progress(scored);
    }
    let nats = total / scored as f64;
    Ok(Perplexity { ppl: nats.exp(), nats_per_token: nats, tokens: scored })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let v = super::nll(&[0.5; 8], 3);
        assert!((v - 8f64.ln()).abs() < 1e-12);
        // A dominant correct logit costs almost nothing.
        assert!(super::nll(&[0.0, 50.0, 0.0], 1) < 1e-20);
    }
}
