//! The engine: one thread that owns the slots (a KV cache each) and runs every step of
//! every request, several sequences per step ([`crate::batch`]).
//!
//! Each step takes one decode row from every slot that is generating, plus up to
//! [`PREFILL_CHUNK`] prompt tokens of the slots still reading their prompts (oldest
//! first), so a new prompt never stalls the running streams for longer than one chunk.
//! After the step, each slot whose row was its last so far samples its next token with its
//! own seeded sampler and sends the text it completes to its request.
//!
//! A request waits in a bounded queue until a slot is free; [`Engine::submit`] refuses it
//! when the queue is full. A slot whose request went away (the receiver is dropped: the
//! client disconnected) is freed before the next step.

use crate::batch::{Batch, Segment, Sequence};
use crate::generate::StopFilter;
use crate::model::KvType;
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::Session;
use crate::tokenizer::Detokenizer;
use anyhow::Result;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Prompt tokens a step takes at most, over all slots still reading their prompts.
pub const PREFILL_CHUNK: usize = 32;

/// A request as the engine runs it: checked and tokenized.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (the prompt plus these fit the slot's context).
    pub max_new: usize,
    pub sampler: SamplerConfig,
    pub seed: u64,
    /// Generation stops when the text contains one of these (which is not sent).
    pub stop: Vec<String>,
    /// Generation stops at any of these ids.
    pub end_ids: Vec<u32>,
    pub events: UnboundedSender<Event>,
}

/// What the engine sends a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token's text (empty when it completes no character yet or is held
    /// back as the possible start of a stop string), or the text held back at the end.
    Text(String),
    /// The end of the output.
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    /// The request failed in the engine (the server's fault: the request was checked).
    Failed(String),
}

/// Why an output ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end id, or a stop string.
    Stop,
    /// `max_new` tokens (the most the request asked for, or the context's end).
    Length,
}

impl Finish {
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// The engine's settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Sequences decoded together.
    pub parallel: usize,
    /// Positions of each slot's KV cache.
    pub ctx: usize,
    /// Requests that may wait for a slot.
    pub queue: usize,
    pub threads: usize,
    pub kv_type: KvType,
}

/// The request side of a running engine.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
}

/// [`Engine::submit`] found the queue full.
#[derive(Debug)]
pub struct Busy;

impl Engine {
    /// Allocates the slots and starts the engine thread; it runs until every [`Engine`]
    /// handle is dropped.
    pub fn start(session: Arc<Session>, opts: EngineOptions) -> Result<Self> {
        let c = session.model.config();
        let slots = (0..opts.parallel)
            .map(|_| Sequence::new(c, opts.ctx, PREFILL_CHUNK, opts.kv_type))
            .collect::<Result<Vec<_>>>()?;
        let batch = Batch::new(c, opts.parallel + PREFILL_CHUNK);
        let (jobs, inbox) = mpsc::sync_channel(opts.queue);
        let threads = opts.threads;
        // Test hook, read here only: a pause after each step, so that tests can hold a slot
        // busy (tests/serve.rs).
        let pause = std::env::var("TERN_SERVE_STEP_PAUSE_MS").ok().and_then(|v| v.parse().ok());
        let pause = pause.map(std::time::Duration::from_millis);
        std::thread::Builder::new().name("tern-engine".into()).spawn(move || {
            let slots = slots.into_iter().map(Slot::new).collect();
            let run = || Runner { session: &session, batch, slots, pause }.run(inbox);
            if let Err(e) = crate::pool::with_threads(threads, run) {
                eprintln!("tern: error: starting worker threads: {e}");
                std::process::exit(1);
            }
        })?;
        Ok(Engine { jobs })
    }

    /// Queues a job for the next free slot, or says the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A request in a slot.
struct Active<'s> {
    job: Job,
    sampler: Sampler,
    /// The prompt and the tokens generated so far: the positions the cache holds or will
    /// hold after the next step.
    history: Vec<u32>,
    /// Positions already run through the model.
    done: usize,
    generated: usize,
    detok: Detokenizer<'s>,
    /// Text held back by the stop filter (it could be the start of a stop string).
    stop_pending: String,
    logits: Vec<f32>,
}

struct Slot<'s> {
    seq: Sequence,
    active: Option<Active<'s>>,
}

impl Slot<'_> {
    fn new(seq: Sequence) -> Self {
        Slot { seq, active: None }
    }
}

struct Runner<'s> {
    session: &'s Session,
    batch: Batch,
    slots: Vec<Slot<'s>>,
    pause: Option<std::time::Duration>,
}

impl<'s> Runner<'s> {
    fn run(mut self, inbox: Receiver<Job>) {
        loop {
            // Free the slots whose requests went away, then fill the free ones.
            for slot in &mut self.slots {
                if slot.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                    slot.active = None;
                }
            }
            let idle = self.slots.iter().all(|s| s.active.is_none());
            for i in 0..self.slots.len() {
                if self.slots[i].active.is_some() {
                    continue;
                }
                let job = if idle && i == 0 {
                    match inbox.recv() {
                        Ok(job) => job,
                        Err(_) => return, // Every handle is gone: the server stopped.
                    }
                } else {
                    match inbox.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                if !job.events.is_closed() {
                    self.slots[i].active = Some(self.admit(job));
                }
            }
            if let Some(pause) = self.pause {
                std::thread::sleep(pause);
            }
            if let Err(e) = self.step() {
                // A checked request cannot fail here; if one does, its slot is not to be trusted.
                for slot in &mut self.slots {
                    if let Some(a) = slot.active.take() {
                        let _ = a.job.events.send(Event::Failed(format!("{e:#}")));
                    }
                }
            }
        }
    }

    fn admit(&self, job: Job) -> Active<'s> {
        let vocab = self.session.model.config().vocab_size as usize;
        let sampler = Sampler::new(job.sampler, job.seed, vocab);
        let history = job.prompt.clone();
        let detok = Detokenizer::new(&self.session.tok, &job.prompt);
        Active { sampler, history, done: 0, generated: 0, detok, stop_pending: String::new(), logits: Vec::new(), job }
    }

    /// One batched pass: a decode row per generating slot and a prompt chunk, then sampling.
    fn step(&mut self) -> Result<()> {
        let model = &self.session.model;
        let mut budget = PREFILL_CHUNK;
        // (slot, range of its history this step runs).
        let mut plan = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(a) = &slot.active else { continue };
            let left = a.history.len() - a.done;
            if a.done >= a.job.prompt.len() {
                plan.push((i, a.done..a.done + 1));
            } else if budget > 0 {
                let n = left.min(budget);
                budget -= n;
                plan.push((i, a.done..a.done + n));
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        // Each planned slot's own logits buffer, lent to the step and given back below, so
        // that a step allocates no vocabulary-sized buffers once every slot has one.
        let mut outs: Vec<Vec<f32>> = plan
            .iter()
            .map(|(i, _)| std::mem::take(&mut self.slots[*i].active.as_mut().expect("a planned slot is active").logits))
            .collect();
        let mut seqs: Vec<Option<(&mut Sequence, &Active)>> =
            self.slots.iter_mut().map(|s| s.active.as_ref().map(|a| (&mut s.seq, a))).collect();
        let mut segments: Vec<Segment> = plan
            .iter()
            .map(|(i, r)| {
                let (seq, a) = seqs[*i].take().expect("a planned slot is active");
                Segment { seq, tokens: &a.history[r.clone()], pos: r.start, logits: r.end == a.history.len() }
            })
            .collect();
        self.batch.step(model, &mut segments, &mut |s, logits| {
            outs[s].clear();
            outs[s].extend_from_slice(logits);
        })?;
        drop(segments);
        for ((i, r), logits) in plan.into_iter().zip(outs) {
            let slot = &mut self.slots[i];
            let a = slot.active.as_mut().expect("a planned slot is active");
            a.done = r.end;
            a.logits = logits;
            if a.done < a.history.len() {
                continue; // The prompt goes on in the next step.
            }
            if let Some(finish) = self.advance(i) {
                let a = self.slots[i].active.take().expect("the slot just stepped");
                let prompt_tokens = a.job.prompt.len();
                let _ = a.job.events.send(Event::Done { finish, prompt_tokens, completion_tokens: a.generated });
            }
        }
        Ok(())
    }

    /// Samples slot `i`'s next token from its logits and sends the text it completes, as
    /// [`crate::generate::generate`] does; returns why the output ended, if it did.
    fn advance(&mut self, i: usize) -> Option<Finish> {
        let a = self.slots[i].active.as_mut().expect("an active slot");
        if a.job.max_new == 0 {
            return Some(Finish::Length);
        }
        let next = a.sampler.sample(&mut a.logits, &a.history);
        a.generated += 1;
        let mut stop = StopFilter::resume(&a.job.stop, std::mem::take(&mut a.stop_pending));
        let finish = if a.job.end_ids.contains(&next) {
            Some(Finish::Stop)
        } else {
            a.history.push(next);
            let (text, hit) = match a.detok.push(next) {
                Ok(piece) => stop.push(&piece),
                Err(e) => {
                    let _ = a.job.events.send(Event::Failed(format!("decoding token {next}: {e:#}")));
                    return Some(Finish::Stop);
                }
            };
            // One event per token, even when its text is held back or empty (a stream then
            // shows every token's arrival, as OpenAI's and llama.cpp's do).
            let _ = a.job.events.send(Event::Text(text));
            if hit {
                return Some(Finish::Stop);
            }
            (a.generated == a.job.max_new).then_some(Finish::Length)
        };
        if finish.is_some() {
            // The end: whatever the detokenizer and the stop filter still hold.
            let (text, _) = stop.push(&a.detok.flush().unwrap_or_default());
            let rest = text + stop.pending();
            send_text(&a.job.events, rest);
        } else {
            a.stop_pending = stop.into_pending();
        }
        finish
    }
}

fn send_text(events: &UnboundedSender<Event>, text: String) {
    if !text.is_empty() {
        let _ = events.send(Event::Text(text));
    }
}
