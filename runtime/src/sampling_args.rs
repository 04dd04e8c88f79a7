//! The sampling flags that `generate` and `chat` share, resolved against the model file's
//! defaults and checked once; and Ctrl-C turned into a flag.

use anyhow::{bail, Context, Result};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tern::sampler::SamplerConfig;
use tern_format::GenerationDefaults;

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
    /// The sampler settings (flags over the model file's defaults), checked, and the seed.
    pub fn resolve(&self, g: GenerationDefaults) -> Result<(SamplerConfig, u64)> {
        let sampler = SamplerConfig {
            temperature: self.temp.unwrap_or(g.temperature),
            top_k: self.top_k.unwrap_or(g.top_k as usize),
            top_p: self.top_p.unwrap_or(g.top_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(g.repeat_penalty),
            repeat_last_n: 64,
        };
        if !(sampler.temperature.is_finite() && sampler.temperature >= 0.0) {
            bail!("--temp must be a number ≥ 0");
        }
        if !(sampler.top_p > 0.0 && sampler.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
        if !(sampler.repeat_penalty.is_finite() && sampler.repeat_penalty > 0.0) {
            bail!("--repeat-penalty must be a number > 0");
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Ok((sampler, seed))
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
