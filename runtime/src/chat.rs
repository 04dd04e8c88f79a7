//! A multi-turn conversation that keeps its KV cache across turns.
//!
//! Each turn renders the whole conversation with the model's template
//! ([`crate::chat_template`]), and runs only the tokens after the longest prefix that the
//! cache already holds: the previous turns are not processed again (a template that
//! rewrites earlier text, or a reply whose text re-encodes to other tokens, only costs the
//! tokens from the first difference on). Because a prompt chunk computes the same bits as
//! its tokens decoded one at a time, a reply is the same whether the earlier turns came
//! from the cache or were processed afresh.
//!
//! When the context fills, the oldest turns after the system prompt are dropped and the
//! conversation is processed again from the first difference.

pub use crate::chat_template::Message;
use crate::chat_template::{ChatTemplate, FALLBACK_STOP};
use crate::generate::StopFilter;
use crate::model::{KvType, Model, State, DEFAULT_BATCH};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{Detokenizer, TextTokenizer};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// Texts of tokens that end a turn in the templates of published chat models, besides the
/// model's EOS ids.
const END_OF_TURN: [&str; 4] = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>"];

/// The ids that end a reply: the model's EOS ids and the end-of-turn tokens its
/// tokenizer has (the server's chat completions stop at the same ones).
pub fn end_ids(model: &Model, tok: &TextTokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = model.config().eos_ids().collect();
    ids.extend(END_OF_TURN.iter().filter_map(|t| tok.token_id(t)));
    ids
}

/// Settings of a conversation.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub sampler: SamplerConfig,
    pub seed: u64,
    /// Tokens a reply may have at most (`None`: until an end-of-turn token or the context's end).
    pub max_reply: Option<usize>,
    /// Context positions (at most the model's).
    pub ctx: usize,
    pub kv_type: KvType,
    /// The system prompt, kept when old turns are dropped.
    pub system: Option<String>,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or the template's stop text.
    Stop,
    /// `max_reply` tokens, or the context is full.
    Length,
    /// The caller's cancel flag was raised.
    Cancelled,
}

/// What one turn did.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub finish: Finish,
    /// Tokens of the rendered conversation processed for this turn (the rest came from the cache).
    pub prompt_tokens: usize,
    /// Tokens of the rendered conversation taken from the cache.
    pub cached_tokens: usize,
    pub reply_tokens: usize,
    /// Old turns dropped to make room.
    pub dropped_turns: usize,
    pub prompt_secs: f64,
    pub reply_secs: f64,
}

/// A conversation with a model.
pub struct Chat<'m> {
    model: &'m Model,
    tok: &'m TextTokenizer,
    template: ChatTemplate,
    opts: ChatOptions,
    /// The turns after the system prompt.
    turns: Vec<Message>,
    st: State,
    /// The tokens whose keys and values the cache holds, in order from position 0.
    cached: Vec<u32>,
    end_ids: Vec<u32>,
    stops: Vec<String>,
    sampler: Sampler,
}

impl<'m> Chat<'m> {
    pub fn new(model: &'m Model, tok: &'m TextTokenizer, template: ChatTemplate, opts: ChatOptions) -> Result<Self> {
        let c = model.config();
        let st = State::with_kv(c, opts.ctx, DEFAULT_BATCH, opts.kv_type)?;
        let end_ids = end_ids(model, tok);
        let stops = if template.is_fallback() { vec![FALLBACK_STOP.to_string()] } else { Vec::new() };
        let sampler = Sampler::new(opts.sampler, opts.seed, c.vocab_size as usize);
        Ok(Chat { model, tok, template, opts, turns: Vec::new(), st, cached: Vec::new(), end_ids, stops, sampler })
    }

    /// Forgets every turn (the system prompt stays).
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Whether the model file has no template and tern's fallback is used.
    pub fn is_fallback(&self) -> bool {
        self.template.is_fallback()
    }

    /// The turns so far (after the system prompt).
    pub fn turns(&self) -> &[Message] {
        &self.turns
    }

    /// The ids that end a reply.
    pub fn end_ids(&self) -> &[u32] {
        &self.end_ids
    }

    fn messages(&self) -> Vec<Message> {
        let system = self.opts.system.as_deref().map(|s| Message::new("system", s));
        system.into_iter().chain(self.turns.iter().cloned()).collect()
    }

    /// Adds the user's turn and generates the reply, streaming its text to `emit`. Stops at
    /// an end-of-turn token, after `max_reply` tokens, at the context's end, or when
    /// `cancel` is raised (checked before each token).
    pub fn reply(
        &mut self,
        user: &str,
        cancel: &AtomicBool,
        emit: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Reply> {
        self.turns.push(Message::new("user", user));
        let prepared = self.prepare();
        let (ids, dropped) = match prepared {
            Ok(x) => x,
            Err(e) => {
                self.turns.pop();
                return Err(e);
            }
        };
        // Tokens the cache already holds; at least the last token runs, for its logits.
        let same = self.cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        let t0 = std::time::Instant::now();
        self.cached.truncate(same);
        let mut logits = self.model.forward(&mut self.st, &ids[same..], same)?.to_vec();
        self.cached.extend_from_slice(&ids[same..]);
        let prompt_secs = t0.elapsed().as_secs_f64();

        let t1 = std::time::Instant::now();
        let ctx = self.opts.ctx;
        let mut detok = Detokenizer::new(self.tok, &ids);
        let mut stop = StopFilter::new(&self.stops);
        let (mut text, mut n, mut finish) = (String::new(), 0, Finish::Length);
        loop {
            if cancel.load(Ordering::Relaxed) {
                finish = Finish::Cancelled;
                break;
            }
            if self.opts.max_reply.is_some_and(|m| n >= m) || self.cached.len() >= ctx {
                break;
            }
            let next = self.sampler.sample(&mut logits, &self.cached);
            n += 1;
            if self.end_ids.contains(&next) {
                finish = Finish::Stop;
                break;
            }
            let (piece, hit) = stop.push(&detok.push(next)?);
            text.push_str(&piece);
            emit(&piece)?;
            let pos = self.cached.len();
            self.cached.push(next);
            if hit {
                finish = Finish::Stop;
                break;
            }
            if pos + 1 < ctx {
                logits.copy_from_slice(self.model.forward(&mut self.st, &[next], pos)?);
            }
        }
        if finish != Finish::Stop {
            let (piece, _) = stop.push(&detok.flush()?);
            let rest = format!("{piece}{}", stop.pending());
            text.push_str(&rest);
            emit(&rest)?;
        }
        self.turns.push(Message::new("assistant", &text));
        Ok(Reply {
            text,
            finish,
            prompt_tokens: ids.len() - same,
            cached_tokens: same,
            reply_tokens: n,
            dropped_turns: dropped,
            prompt_secs,
            reply_secs: t1.elapsed().as_secs_f64(),
        })
    }

    /// The rendered conversation's ids, after dropping the oldest turns until it leaves
    /// room for a reply; and how many turns were dropped.
    fn prepare(&mut self) -> Result<(Vec<u32>, usize)> {
        let ctx = self.opts.ctx;
        // Room kept for the reply: its maximum when that is small, else a quarter of the context.
        let room = self.opts.max_reply.unwrap_or(usize::MAX).min(ctx / 4).max(1);
        let mut dropped = 0;
        loop {
            let ids = self.template.encode(self.tok, &self.messages(), true)?;
            if ids.is_empty() {
                bail!("the chat template rendered no tokens");
            }
            if ids.len() + room <= ctx {
                return Ok((ids, dropped));
            }
            if self.turns.len() <= 1 {
                bail!(
                    "this message needs {} tokens with the conversation's template, but the context of {ctx} positions \
                     keeps {room} for the reply; write a shorter message or raise --ctx-size",
                    ids.len()
                );
            }
            // Drop the oldest exchange (a user turn and its reply).
            let n = if self.turns.len() > 2 { 2 } else { 1 };
            self.turns.drain(..n);
            dropped += n;
        }
    }
}
