//! `tern bench`: prompt processing (pp) and token generation (tg) speed, llama-bench style.
//!
//! pp N: one forward pass over N tokens. tg N: N single-token decode steps (greedy, so the
//! work is the real decode loop). Both start at position 0, or with `-d D` (llama-bench's
//! depth) after a D-token context filled once, untimed, at each thread count. Each test
//! runs once untimed (to fault in the mapped weights), then `reps` timed repetitions; a tg
//! test's repetitions have a bandwidth probe pass before each and after the last
//! ([`BenchResult::paired`]).

use crate::kernels::Kernels;
use crate::model::{KvType, Model, State};
use crate::sampler::argmax;
use anyhow::{bail, Result};
use std::time::Instant;

/// One line of results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub test: String,
    pub threads: usize,
    pub tokens_per_s: f64,
    pub sd: f64,
    pub model_bytes: u64,
    /// Context positions filled before the test (only in JSON when not 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub depth: usize,
    /// The KV cache's type (only in JSON when not the default f32).
    #[serde(skip_serializing_if = "is_default")]
    pub kv_cache: KvType,
    /// tg only: each timed repetition's tok/s and the better of the two bandwidth probes
    /// (bytes/s, [`stream_pass`]) run just before and just after it, so that a share of
    /// the roofline compares a repetition with what the machine streamed at that moment
    /// (this machine's bandwidth moves within seconds). Not in the JSON.
    #[serde(skip)]
    pub paired: Vec<(f64, f64)>,
}

fn is_default(kv: &KvType) -> bool {
    *kv == KvType::default()
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

/// Deterministic pseudo-random prompt tokens (never BOS/EOS).
fn prompt(n: usize, vocab: u32) -> Vec<u32> {
    let mut s = 0x9E37_79B9u32;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            3 + s % (vocab - 3)
        })
        .collect()
}

fn run_pp(model: &Model, st: &mut State, tokens: &[u32], depth: usize) -> Result<f64> {
    let t0 = Instant::now();
    model.forward(st, tokens, depth)?;
    Ok(tokens.len() as f64 / t0.elapsed().as_secs_f64())
}

fn run_tg(model: &Model, st: &mut State, n: usize, first: u32, depth: usize) -> Result<f64> {
    let t0 = Instant::now();
    let mut tok = first;
    for pos in depth..depth + n {
        tok = argmax(model.forward(st, &[tok], pos)?);
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Weight bytes one decode step reads: every ternary matrix and the output matrix.
pub fn decode_bytes(model: &Model) -> u64 {
    let c = model.config();
    let out = if c.tied_output { tern_format::names::TOKEN_EMBD } else { tern_format::names::OUTPUT };
    model
        .file()
        .tensors()
        .iter()
        .filter(|t| t.encoding == tern_format::Encoding::T2 || t.name == out)
        .map(|t| t.length)
        .sum()
}

/// KV-cache bytes a decode step reads on average over `tg` steps from position `depth`:
/// the step at position `p` reads the keys and values of positions `0..=p` in every
/// layer, of `kv.bytes()` each.
pub fn kv_bytes(model: &Model, depth: usize, tg: usize, kv: KvType) -> u64 {
    let c = model.config();
    // mean over p in depth..depth + tg of 2 · layers · (p + 1) · kv_dim · bytes, where the
    // mean of p + 1 is depth + (tg + 1) / 2: layers · kv_dim · bytes · (2 · depth + tg + 1)
    u64::from(c.n_layers) * c.kv_dim() as u64 * kv.bytes() as u64 * (2 * depth as u64 + tg as u64 + 1)
}

/// Streaming read bandwidth over `bytes` (bytes/s), in the current pool: the best of
/// `reps` passes each of the portable read loop and the `kernels`' wide loads (with the
/// software prefetch the decode kernels use), so the ceiling is what the machine can
/// stream, not what one way of reading it gets.
pub fn stream_bandwidth(kernels: &Kernels, bytes: &[u8], reps: usize) -> f64 {
    (0..reps.max(1)).map(|_| stream_pass(kernels, bytes)).fold(0.0, f64::max)
}

/// One pass of [`stream_bandwidth`]: the better of the portable loop and the kernels'
/// over `bytes` once each, on the current rayon pool.
pub fn stream_pass(kernels: &Kernels, bytes: &[u8]) -> f64 {
    use rayon::prelude::*;
    let mut best = 0.0f64;
    for k in [Kernels::portable(), *kernels] {
        let t0 = Instant::now();
        let sum = bytes.par_chunks(1 << 20).map(|c| k.read_sum(c)).reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.max(bytes.len() as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

/// Bytes of the mapping that starts at `bytes` which the kernel maps with 2 MiB pages
/// (`FilePmdMapped` in `/proc/self/smaps`), or `None` where that cannot be read.
pub fn huge_page_bytes(bytes: &[u8]) -> Option<u64> {
    pmd_mapped(&std::fs::read_to_string("/proc/self/smaps").ok()?, bytes.as_ptr() as usize)
}

/// `FilePmdMapped` of the mapping starting at `addr` in an smaps listing.
fn pmd_mapped(smaps: &str, addr: usize) -> Option<u64> {
    let start = format!("{addr:x}-");
    // An entry's fields ("Name:   value") run until the next entry's header line.
    let kb = smaps
        .lines()
        .skip_while(|l| !l.starts_with(&start))
        .skip(1)
        .take_while(|l| l.split_whitespace().next().is_some_and(|w| w.ends_with(':')))
        .find_map(|l| l.strip_prefix("FilePmdMapped:"))?;
    Some(kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
}

/// The streaming bandwidth (bytes/s) over the model file at each thread count, for the
/// decode roofline: bytes per step ([`decode_bytes`] + [`kv_bytes`]) over this.
pub fn bandwidths(model: &Model, threads: &[usize], reps: usize) -> Result<Vec<(usize, f64)>> {
    let bytes = model.file().bytes();
    let mut out = Vec::new();
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        out.push((t, pool.install(|| stream_bandwidth(model.kernels(), bytes, reps + 1))));
    }
    Ok(out)
}

/// The lengths of `v` that are not 0, in order.
pub fn nonzero(v: &[usize]) -> Vec<usize> {
    v.iter().copied().filter(|&n| n > 0).collect()
}

/// The name of a test, llama-bench style: `tg64`, or `tg64 @ d512` after a context.
pub fn test_name(test: &str, n: usize, depth: usize) -> String {
    if depth == 0 {
        format!("{test}{n}")
    } else {
        format!("{test}{n} @ d{depth}")
    }
}

/// Checks the arguments of [`bench`] before any test runs; returns the positions its
/// tests need (`depth` plus the longest test).
pub fn check(model: &Model, pp: &[usize], tg: &[usize], depth: usize, threads: &[usize], reps: usize) -> Result<usize> {
    let max = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
    let (max_pp, max_tg) = (max(pp), max(tg));
    let ctx = depth + max_pp.max(max_tg);
    if max_pp.max(max_tg) == 0 {
        bail!("nothing to run: -p and -n are both 0");
    }
    if reps == 0 {
        bail!("-r must be at least 1");
    }
    if threads.contains(&0) {
        bail!("-t: thread counts must be ≥ 1");
    }
    let positions = model.config().max_positions as usize;
    if ctx > positions {
        bail!(
            "-d {depth} plus the larger of -p {max_pp} and -n {max_tg} needs {ctx} positions, but the model's context \
             is {positions}"
        );
    }
    Ok(ctx)
}

/// Runs a pp test of each length in `pp` and a tg test of each length in `tg` (lengths of 0
/// are skipped, as llama-bench's `-p 0`) at each thread count, after `depth` positions of
/// context, with a KV cache of `kv` and prompt chunks of `batch` tokens (llama-bench's `-b`).
/// At each thread count the context is filled once, then the pp tests run in order, then
/// the tg tests.
#[allow(clippy::too_many_arguments)]
pub fn bench(
    model: &Model,
    pp: &[usize],
    tg: &[usize],
    depth: usize,
    threads: &[usize],
    reps: usize,
    kv: KvType,
    batch: usize,
) -> Result<Vec<BenchResult>> {
    let c = model.config();
    let ctx = check(model, pp, tg, depth, threads, reps)?;
    let (pp, tg) = (nonzero(pp), nonzero(tg));
    let max_pp = pp.iter().copied().max().unwrap_or(0);
    let mut st = State::with_kv(c, ctx, batch, kv)?;
    let tokens = prompt(depth + max_pp, c.vocab_size.max(4));
    let (context, tokens) = tokens.split_at(depth);
    let first = c.bos_id.unwrap_or(0);
    let mut out = Vec::new();
    for &t in threads {
        // The bandwidth probes beside each tg repetition, on a rayon pool of as many threads.
        let probes = if !tg.is_empty() { Some(rayon::ThreadPoolBuilder::new().num_threads(t).build()?) } else { None };
        let probe =
            || probes.as_ref().map_or(0.0, |p| p.install(|| stream_pass(model.kernels(), model.file().bytes())));
        let mut record = |test: String, runs: &mut dyn FnMut() -> Result<f64>, paired: bool| -> Result<()> {
            runs()?; // warm-up
            let (mut v, mut pairs) = (Vec::with_capacity(reps), Vec::new());
            let mut before = if paired { probe() } else { 0.0 };
            for _ in 0..reps {
                let rate = runs()?;
                v.push(rate);
                if paired {
                    let after = probe();
                    pairs.push((rate, before.max(after)));
                    before = after;
                }
            }
            let (m, sd) = mean_sd(&v);
            out.push(BenchResult {
                test,
                threads: t,
                tokens_per_s: m,
                sd,
                model_bytes: model.file().len(),
                depth,
                kv_cache: kv,
                paired: pairs,
            });
            Ok(())
        };
        let tests = || -> Result<()> {
            // The context, once: the tests write only the positions after it.
            if depth > 0 {
                model.forward(&mut st, context, 0)?;
            }
            for &pp in &pp {
                let tokens = &tokens[..pp];
                record(test_name("pp", pp, depth), &mut || run_pp(model, &mut st, tokens, depth), false)?;
            }
            for &tg in &tg {
                record(test_name("tg", tg, depth), &mut || run_tg(model, &mut st, tg, first, depth), true)?;
            }
            Ok(())
        };
        crate::pool::with_threads(t, tests)??;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmd_mapped_reads_the_entry_of_the_address_only() {
        let smaps = "\
7f0000000000-7f0010000000 r--s 00000000 fe:00 5366294                    /work/a.tern
Size:             262144 kB
Rss:              262144 kB
FilePmdMapped:    241664 kB
VmFlags: rd sh mr mw me ms hg
7f0010000000-7f0010200000 r--s 00000000 fe:00 5366295                    /work/b.tern
Size:               2048 kB
VmFlags: rd sh mr mw me ms
7f0020000000-7f0020200000 r--p 00000000 fe:00 5366296                    /work/c
Size:               2048 kB
FilePmdMapped:      2048 kB
";
        assert_eq!(pmd_mapped(smaps, 0x7f00_0000_0000), Some(241_664 * 1024));
        // b.tern has no FilePmdMapped field: the search must not run on into c's.
        assert_eq!(pmd_mapped(smaps, 0x7f00_1000_0000), None);
        assert_eq!(pmd_mapped(smaps, 0x7f00_2000_0000), Some(2048 * 1024));
        assert_eq!(pmd_mapped(smaps, 0x1234), None);
    }
}
