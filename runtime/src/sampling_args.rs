//! The sampling flags that `generate` and `chat` share (resolved and checked by
//! [`tern::args::Sampling`], as for Python); and Ctrl-C turned into a flag.

use anyhow::{Context, Result};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tern::args::Sampling;

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy (default: the model file's)
    #[arg(long, allow_negative_numbers = true)]
    temp: Option<f32>,
    /// Keep only the K most likely tokens; 0 = all (default: the model file's)
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (default: the model file's)
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Penalise the last 64 tokens by this factor; 1 = off (default: the model file's)
    #[arg(long, allow_negative_numbers = true)]
    repeat_penalty: Option<f32>,
    /// Random seed (default: from the clock; printed with the stats)
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    /// The flags as the library takes them (checked there against the model's defaults),
    /// and the seed if one was given.
    pub fn request(&self) -> (Sampling, Option<u64>) {
        let s = Sampling {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
        };
        (s, self.seed)
    }
}

/// From now on, Ctrl-C (SIGINT) sets the returned flag instead of killing the process; a
/// Ctrl-C that comes while the flag is already set exits at once with 130.
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    use signal_hook::{consts::SIGINT, flag};
    let interrupted = Arc::new(AtomicBool::new(false));
    // The shutdown goes first: it acts only once the flag is already set.
    flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&interrupted)).context("handling Ctrl-C")?;
    flag::register(SIGINT, Arc::clone(&interrupted)).context("handling Ctrl-C")?;
    Ok(interrupted)
}
