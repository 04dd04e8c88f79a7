//! The checks on a request's arguments that the CLI and the Python binding share, with
//! one message each (the flag's name, as the CLI spells it), and the sampler settings
//! built from the model file's defaults and the caller's overrides.
//!
//! A failed check is an [`ArgError`], so that a caller can tell bad arguments (the
//! binding raises `ValueError`) from a bad file or a failed computation.

use crate::sampler::SamplerConfig;
use tern_format::{GenerationDefaults, ModelConfig};

/// An argument outside its range: the message says which and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgError(pub String);

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

/// How many tokens the penalty of `--repeat-penalty` looks back (llama.cpp's default).
pub const REPEAT_LAST_N: usize = 64;

/// Sampling settings given by the caller; `None` takes the model file's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
}

impl Sampling {
    /// The sampler settings: each override, else the model file's default; checked.
    pub fn resolve(&self, defaults: &GenerationDefaults) -> Result<SamplerConfig, ArgError> {
        let s = SamplerConfig {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k as usize),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            repeat_last_n: REPEAT_LAST_N,
        };
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(ArgError(format!("--temp must be a number ≥ 0 (got {})", s.temperature)));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(ArgError(format!("--top-p must be in (0, 1] (got {})", s.top_p)));
        }
        if !(s.repeat_penalty.is_finite() && s.repeat_penalty > 0.0) {
            return Err(ArgError(format!("--repeat-penalty must be a number > 0 (got {})", s.repeat_penalty)));
        }
        Ok(s)
    }
}

/// Stop strings must be non-empty: an empty one would end generation before its first token.
pub fn check_stops(stops: &[String]) -> Result<(), ArgError> {
    if stops.iter().any(String::is_empty) {
        return Err(ArgError(
            "--stop needs a non-empty string (an empty one would end generation before its first token)".into(),
        ));
    }
    Ok(())
}

/// Checks that a prompt of `prompt_len` tokens plus `max_new` fits a context of `ctx`
/// positions; returns the positions needed.
pub fn check_context(prompt_len: usize, max_new: usize, ctx: usize) -> Result<usize, ArgError> {
    let need = prompt_len + max_new;
    if need > ctx {
        return Err(ArgError(format!(
            "the prompt ({prompt_len} tokens) plus -n {max_new} needs {need} positions, but the model's context is \
             {ctx}; shorten the prompt or lower -n"
        )));
    }
    Ok(need)
}

/// Every token id must index the vocabulary.
pub fn check_tokens(config: &ModelConfig, tokens: &[u32]) -> Result<(), ArgError> {
    match tokens.iter().find(|&&t| t >= config.vocab_size) {
        Some(bad) => Err(ArgError(format!("token id {bad} is not below the vocabulary size {}", config.vocab_size))),
        None => Ok(()),
    }
}

/// A prompt chunk size (`-b, --batch-size`) must be at least one token; returns it.
pub fn check_batch(batch: usize) -> Result<usize, ArgError> {
    if batch == 0 {
        return Err(ArgError("--batch-size must be at least 1 (the tokens of a prompt chunk; got 0)".into()));
    }
    Ok(batch)
}

/// The seed given, or one from the clock (the CLI prints it with its stats).
pub fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_and_are_checked() {
        let d = GenerationDefaults::default();
        let s = Sampling { temperature: Some(0.0), top_k: None, top_p: Some(0.5), repeat_penalty: None };
        let c = s.resolve(&d).unwrap();
        assert_eq!((c.temperature, c.top_k, c.top_p, c.repeat_penalty), (0.0, 40, 0.5, 1.0));
        assert_eq!(c.repeat_last_n, REPEAT_LAST_N);
        let bad = |s: Sampling| s.resolve(&d).unwrap_err().0;
        assert!(bad(Sampling { temperature: Some(-1.0), ..s }).starts_with("--temp must be a number ≥ 0"));
        assert!(bad(Sampling { temperature: Some(f32::NAN), ..s }).starts_with("--temp"));
        assert!(bad(Sampling { top_p: Some(0.0), ..s }).starts_with("--top-p must be in (0, 1]"));
        assert!(bad(Sampling { top_p: Some(1.5), ..s }).starts_with("--top-p"));
        assert!(bad(Sampling { repeat_penalty: Some(0.0), ..s }).starts_with("--repeat-penalty"));
    }

    #[test]
    fn context_stops_and_tokens_are_checked() {
        assert_eq!(check_context(10, 5, 15), Ok(15));
        let e = check_context(10, 6, 15).unwrap_err().0;
        assert!(e.contains("needs 16 positions, but the model's context is 15"), "{e}");
        assert!(check_stops(&["a".into()]).is_ok());
        assert!(check_stops(&["a".into(), String::new()]).unwrap_err().0.starts_with("--stop needs"));
        assert_eq!(seed_or_clock(Some(7)), 7);
        assert_eq!(check_batch(7), Ok(7));
        assert!(check_batch(0).unwrap_err().0.starts_with("--batch-size must be at least 1"));
    }
}
