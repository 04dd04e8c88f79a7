//! `tern serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! Three parts, in the order a request passes them: [`http`] (routes, limits, streaming),
//! [`api`] (the OpenAI request and response shapes, checked and rendered as `tern
//! generate` and `tern chat` do), and [`engine`] (one thread that owns the model's slots
//! and runs all of them together, step by step, through [`crate::batch`]).

pub mod api;
pub mod engine;
pub mod http;

use crate::model::KvType;
use crate::session::Session;
use anyhow::{bail, Context, Result};
use engine::{Engine, EngineOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The context of each slot when `--ctx-size` is not given: the model's, up to this.
pub const DEFAULT_CTX: usize = 4096;

/// The most slots a server may have (each step's buffers hold a row per slot).
pub const MAX_PARALLEL: usize = 256;

/// What `tern serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub parallel: usize,
    /// Positions per slot (`None`: the model's, at most [`DEFAULT_CTX`]).
    pub ctx: Option<usize>,
    /// Requests that may wait for a free slot.
    pub queue: usize,
    pub api_key: Option<String>,
    pub threads: usize,
    pub kv_type: KvType,
}

/// Loads the model, starts the engine and serves until the process is stopped. Prints
/// `listening on http://HOST:PORT` (the port actually bound: `--port 0` picks a free one).
pub fn run(opts: ServeOptions) -> Result<()> {
    if !(1..=MAX_PARALLEL).contains(&opts.parallel) {
        bail!("--parallel {} is outside 1..={MAX_PARALLEL}", opts.parallel);
    }
    // The engine takes queued requests between steps: a queue of 0 would refuse them all.
    if opts.queue == 0 {
        bail!("--queue must be at least 1");
    }
    let session = Arc::new(Session::open(&opts.model, false)?);
    let max = session.model.config().max_positions as usize;
    let ctx = opts.ctx.unwrap_or(max.min(DEFAULT_CTX));
    if ctx == 0 || ctx > max {
        bail!("--ctx-size {ctx} is outside 1..={max} (the model's context)");
    }
    let engine = Engine::start(
        Arc::clone(&session),
        EngineOptions { parallel: opts.parallel, ctx, queue: opts.queue, threads: opts.threads, kv_type: opts.kv_type },
    )?;
    let model_name = opts.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let shared = Arc::new(http::Shared { session, engine, ctx, api_key: opts.api_key.clone(), model_name });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr} (--host, --port)"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "tern: serving {} with {} slots of {ctx} positions, {} threads",
            opts.model.display(),
            opts.parallel,
            opts.threads
        );
        let mut out = std::io::stdout();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
        http::serve(listener, shared).await;
        Ok(())
    })
}
