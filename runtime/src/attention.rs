//! Self-attention and the KV cache: everything a sequence keeps from one position to the
//! next, reached from the model by one call per layer ([`Attention::forward`]).
//!
//! A call takes the new tokens' queries, keys and values (projected, RoPE not yet
//! applied), rotates the queries and keys, stores the keys and values in the layer's
//! cache, and writes each token's causal softmax attention over every cached position.
//! Here the work is cut into tasks for the pool (spans of positions, runs of heads, runs of
//! tokens); the kernels (`crate::kernels::attend`) compute one task, and lay out the cache.
//!
//! Every position's result is the same bits however the work is cut: attention runs over
//! fixed spans of positions, each summed in one fixed order and joined in span order,
//! whether a token comes alone (decode) or in a prompt chunk of any size, on any number of
//! threads (`tests/invariance.rs` checks the logits bit for bit).
//!
//! The cache is per sequence. A server that decodes several sequences in one step runs
//! their matrix products as one batch of rows (`crate::matmul`), and each sequence's
//! attention over its own [`Attention`].

use crate::kernels::attend::{
    attend_scratch_len, attend_tokens_scratch_len, combine_spans, partial_len, value_at, HeadsAt, ATTEND_TOKENS,
    KEY_BLOCK, SPAN,
};
use crate::kernels::{CacheElem, Kernels};
use crate::ops::rope;
use crate::pool;
use anyhow::{Context, Result};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use tern_format::ModelConfig;
use zerocopy::{FromBytes, IntoBytes};

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// f32: attention exactly as the reference computes it.
    #[default]
    F32,
    /// f16 (rounded to nearest, ties to even): half the memory and half the bytes a
    /// decoded token reads from the cache, as llama.cpp's default cache.
    F16,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// The heads' shape (from the model's config).
#[derive(Clone, Copy)]
struct Heads {
    head_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
}

/// One sequence's attention state for every layer: the KV cache, the RoPE tables, and the
/// scratch of a call. Allocated once for a context of `max_seq` positions and calls of up
/// to `batch` tokens.
pub struct Attention {
    heads: Heads,
    n_layers: usize,
    /// Positions the key cache holds: `max_seq` rounded up to a key block.
    padded_seq: usize,
    /// Per layer: keys, then values, of `padded_seq` positions (see [`attend`]), as
    /// `kv_type` says. Anonymous memory with huge pages advised: decoding at depth streams
    /// the whole cache once per token (through 4 KiB pages, a TLB miss every 4 KiB).
    cache: memmap2::MmapMut,
    kv_type: KvType,
    /// The new keys and values as f16 bits, for an f16 cache.
    k16: Vec<u16>,
    v16: Vec<u16>,
    /// A decoded token's partial attention results, per span and head (see [`attend`]).
    parts: Vec<f32>,
    /// RoPE's `cos` and `sin` per position, `head_dim / 2` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

impl Attention {
    /// The state of a context of `max_seq` positions (checked by the caller against the
    /// model's maximum), for calls of up to `batch` tokens.
    pub fn new(c: &ModelConfig, max_seq: usize, batch: usize, kv_type: KvType) -> Result<Self> {
        let kvd = c.kv_dim();
        let half = c.head_dim as usize / 2;
        // RoPE tables (Hugging Face: inv_freq = theta^(-2i/d), angle = pos * inv_freq).
        let mut rope_cos = vec![0f32; max_seq * half];
        let mut rope_sin = vec![0f32; max_seq * half];
        for pos in 0..max_seq {
            for i in 0..half {
                let inv_freq = f64::from(c.rope_theta).powf(-2.0 * i as f64 / c.head_dim as f64);
                let angle = pos as f64 * inv_freq;
                rope_cos[pos * half + i] = angle.cos() as f32;
                rope_sin[pos * half + i] = angle.sin() as f32;
            }
        }
        let padded_seq = max_seq.next_multiple_of(KEY_BLOCK);
        Ok(Attention {
            heads: Heads {
                head_dim: c.head_dim as usize,
                n_heads: c.n_heads as usize,
                n_kv_heads: c.n_kv_heads as usize,
            },
            n_layers: c.n_layers as usize,
            padded_seq,
            cache: kv_cache(c.n_layers as usize * 2 * padded_seq * kvd * kv_type.bytes())?,
            kv_type,
            k16: if kv_type == KvType::F16 { vec![0; batch * kvd] } else { Vec::new() },
            v16: if kv_type == KvType::F16 { vec![0; batch * kvd] } else { Vec::new() },
            parts: vec![0.0; max_seq.div_ceil(SPAN) * c.n_heads as usize * partial_len(c.head_dim as usize)],
            rope_cos,
            rope_sin,
        })
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.len()
    }

    /// Layer `layer`'s attention for the `n` tokens at positions `p0..p0 + n`: `q` holds
    /// their query heads (`n` rows of `q_dim`), `k` and `v` their keys and values (`n` rows
    /// of `kv_dim`); `out` receives each token's attention output (`n` rows of `q_dim`).
    /// RoPE rotates `q` and `k` in place.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        kernels: &Kernels,
        layer: usize,
        p0: usize,
        q: &mut [f32],
        k: &mut [f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        let Heads { head_dim: hd, n_heads, n_kv_heads } = self.heads;
        let (qd, kvd) = (n_heads * hd, n_kv_heads * hd);
        let n = q.len() / qd;
        let half = hd / 2;
        for t in 0..n {
            let pos = p0 + t;
            let (cos, sin) =
                (&self.rope_cos[pos * half..(pos + 1) * half], &self.rope_sin[pos * half..(pos + 1) * half]);
            for head in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                rope(head, cos, sin);
            }
            for head in k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                rope(head, cos, sin);
            }
        }
        let (heads, padded_seq, parts) = (self.heads, self.padded_seq, &mut self.parts[..]);
        match self.kv_type {
            KvType::F32 => {
                let cache = layer_cache::<f32>(&mut self.cache, layer, self.n_layers);
                attend(heads, kernels, q, (&*k, v), cache, padded_seq, parts, out, p0);
            }
            KvType::F16 => {
                // The new keys and values rounded to f16 (to nearest, ties to even) first.
                let new16 = (&mut self.k16[..n * kvd], &mut self.v16[..n * kvd]);
                new16.0.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(k);
                new16.1.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(v);
                let cache = layer_cache::<u16>(&mut self.cache, layer, self.n_layers);
                attend(heads, kernels, q, (&*new16.0, &*new16.1), cache, padded_seq, parts, out, p0);
            }
        }
    }
}

/// Zeroed memory for a KV cache of `bytes`, with huge pages advised (which may be refused:
/// the cache works either way).
fn kv_cache(bytes: usize) -> Result<memmap2::MmapMut> {
    let bytes = bytes.max(4);
    let map = memmap2::MmapMut::map_anon(bytes)
        .with_context(|| format!("allocating a KV cache of {:.1} MB", bytes as f64 / 1e6))?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// Layer `l`'s part of a KV cache of `E` values.
fn layer_cache<E: CacheElem + FromBytes + IntoBytes>(
    map: &mut memmap2::MmapMut,
    l: usize,
    n_layers: usize,
) -> &mut [E] {
    // An anonymous map is page-aligned and holds whole values of its type (see `Attention::new`).
    let all = <[E]>::mut_from_bytes(&mut map[..]).expect("KV cache: page-aligned whole values");
    let per_layer = all.len() / n_layers;
    &mut all[l * per_layer..(l + 1) * per_layer]
}

thread_local! {
    /// Attention scratch (scores and accumulators), per thread; grows to the longest
    /// context once.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Causal softmax attention of the `n` tokens at positions `p0..p0 + n`: their keys and
/// values `new` (`n` rows of `kv_dim`, RoPE applied) go into this layer's `cache`, then
/// the query heads attend. Grouped-query attention: query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`.
///
/// The layer's cache holds the keys, then the values, of `padded_seq` positions, each in
/// blocks of [`KEY_BLOCK`] positions (layout: [`crate::kernels::attend::attend_heads`]). So the keys
/// and values of all heads at positions `0..p` are two contiguous stretches, which a
/// decoded token streams front to back: per head over the whole context, they would be a
/// few kilobytes here and there, which the prefetchers do not follow (a token waited
/// much longer on them: BENCHMARKS.md). Within a block, each kv head's keys and values are one stretch.
///
/// Attention runs over spans of [`SPAN`] positions, whose partial results combine at the
/// end ([`crate::kernels::attend::combine_spans`]). One token runs tasks of (span, run of whole kv-head
/// groups), at least two per thread (work to take over from a thread that shares its core
/// with another process), writing partial results to `parts`. A prompt chunk runs one task
/// per head and run of up to [`ATTEND_TOKENS`] tokens, which reads each key and value once
/// for all of its tokens ([`crate::kernels::attend::attend_tokens`]). Both compute the same spans the
/// same way: the same bits.
#[allow(clippy::too_many_arguments)]
fn attend<E: CacheElem>(
    heads: Heads,
    kernels: &Kernels,
    q: &[f32],
    new: (&[E], &[E]),
    cache: &mut [E],
    padded_seq: usize,
    parts: &mut [f32],
    out: &mut [f32],
    p0: usize,
) {
    let Heads { head_dim: hd, n_heads, n_kv_heads: n_kv } = heads;
    let (group, kv_dim, n) = (n_heads / n_kv, n_kv * hd, q.len() / (n_heads * hd));
    let (keys, values) = cache.split_at_mut(padded_seq * kv_dim);
    let (keys_new, values_new) = new;
    for t in 0..n {
        store_kv(
            keys,
            values,
            &keys_new[t * kv_dim..(t + 1) * kv_dim],
            &values_new[t * kv_dim..(t + 1) * kv_dim],
            p0 + t,
            hd,
        );
    }
    let (keys, values) = (&*keys, &*values);
    let scale = 1.0 / (hd as f32).sqrt();
    let at = |first_head| HeadsAt { head_dim: hd, first_head, group, kv_dim, scale };
    if n == 1 {
        // One token: tasks of (span, run of kv-head groups), span by span, so that a
        // thread's run of tasks streams a stretch of the cache, in runs of heads where the
        // spans alone give fewer than two tasks per thread. Then the spans combine.
        let (len, pl) = (p0 + 1, partial_len(hd));
        let spans = len.div_ceil(SPAN);
        // A task's heads hold at most 2 KB of a position's values (with more, its
        // accumulators and prefetched values crowd L1: BENCHMARKS.md).
        let max_kv = (2048 / (hd * std::mem::size_of::<E>())).max(1);
        let runs = (2 * pool::threads()).div_ceil(spans).max(n_kv.div_ceil(max_kv)).clamp(1, n_kv);
        // Whole groups, as many per run as still gives `runs` runs: a divisor of n_kv.
        let kv_per_run = (1..=n_kv / runs).rev().find(|d| n_kv % d == 0).unwrap_or(1);
        let (heads, runs) = (kv_per_run * group, n_kv / kv_per_run);
        let parts = &mut parts[..spans * n_heads * pl];
        pool::for_each_chunk_mut(parts, heads * pl, &|i, part| {
            let (span, first) = (i / runs, i % runs * heads);
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let need = attend_scratch_len(heads, hd, SPAN);
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let q = &q[first * hd..(first + heads) * hd];
                let positions = span * SPAN..((span + 1) * SPAN).min(len);
                kernels.attend(q, at(first), keys, values, &mut scratch, positions, part);
            });
        });
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            combine_spans(&parts[h * pl..], n_heads * pl, spans, out);
        }
    } else {
        // A prompt chunk: per head, runs of ATTEND_TOKENS tokens, each run reading the cache once.
        pool::for_each_column_mut(out, hd, n, ATTEND_TOKENS, &|h, tokens, column| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let len = 2 * ATTEND_TOKENS * hd + attend_tokens_scratch_len(hd, padded_seq);
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                let (qs, rest) = scratch.split_at_mut(ATTEND_TOKENS * hd);
                let (outs, scratch) = rest.split_at_mut(ATTEND_TOKENS * hd);
                qs.fill(0.0);
                for (i, t) in tokens.clone().enumerate() {
                    qs[i * hd..(i + 1) * hd].copy_from_slice(&q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd]);
                }
                let (n0, count) = (p0 + tokens.start + 1, tokens.len());
                kernels.attend_tokens(qs, at(h), keys, values, scratch, n0, count, outs);
                for (i, t) in tokens.enumerate() {
                    column.row(t).copy_from_slice(&outs[i * hd..(i + 1) * hd]);
                }
            });
        });
    }
}

/// Stores the keys and values of all kv heads at position `pos` (see [`attend`]).
fn store_kv<E: Copy>(keys: &mut [E], values: &mut [E], key: &[E], value: &[E], pos: usize, hd: usize) {
    let (kv_dim, block) = (key.len(), pos / KEY_BLOCK);
    let key_block = &mut keys[block * KEY_BLOCK * kv_dim..(block + 1) * KEY_BLOCK * kv_dim];
    for (lanes, &x) in key_block.chunks_exact_mut(KEY_BLOCK).zip(key) {
        lanes[pos % KEY_BLOCK] = x;
    }
    for (h, head_values) in value.chunks_exact(hd).enumerate() {
        let at = value_at(pos, h * hd, kv_dim, hd);
        values[at..at + hd].copy_from_slice(head_values);
    }
}
