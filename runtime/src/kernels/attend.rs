//! Causal softmax attention over one layer's KV cache, as the kernel sets compile it:
//! the cache's layout ([`KEY_BLOCK`], [`value_at`]), how its elements widen to f32
//! ([`KvRead`]), one decoded token's heads over one span of positions ([`attend_heads`]),
//! a prompt's tokens for one head ([`attend_tokens`]), and the join of spans
//! ([`combine_spans`]). No threads here: `crate::attention` decides which heads, spans and
//! tokens each task takes.

use super::float::{exp, mul_add, LANES};
use super::prefetch;

/// `body` for `$k` = 0, 1, …, `$n - 1`, written out one after another for a constant `$n`
/// up to 8 (a loop beyond): the tiles' loops over their tokens, which the compiler would
/// otherwise vectorise across tokens (gathers and scatters of sums kept in memory) instead
/// of across lanes.
macro_rules! unrolled {
    ($n:expr, $k:ident => $body:block) => {
        match $n {
            1 => { { let $k = 0; $body } }
            2 => { { let $k = 0; $body } { let $k = 1; $body } }
            3 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } }
            4 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } { let $k = 3; $body } }
            5 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } { let $k = 3; $body } { let $k = 4; $body } }
            6 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } { let $k = 3; $body } { let $k = 4; $body } { let $k = 5; $body } }
            7 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } { let $k = 3; $body } { let $k = 4; $body } { let $k = 5; $body } { let $k = 6; $body } }
            8 => { { let $k = 0; $body } { let $k = 1; $body } { let $k = 2; $body } { let $k = 3; $body } { let $k = 4; $body } { let $k = 5; $body } { let $k = 6; $body } { let $k = 7; $body } }
            _ => {
                for $k in 0..$n $body
            }
        }
    };
}

/// Softmax weights of one span of scores, unnormalised: replaces each score `x` by
/// `e^(x - m)` and returns `(m, l)`, `m` the span's maximum and `l` the sum of the
/// weights (with [`exp`] and [`LANES`] running maxima and sums, so that it vectorises).
#[inline(always)]
pub fn span_weights(x: &mut [f32]) -> (f32, f32) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let c = x.chunks_exact(LANES);
    for &v in c.remainder() {
        m[0] = m[0].max(v);
    }
    for xs in c {
        for j in 0..LANES {
            m[j] = m[j].max(xs[j]);
        }
    }
    let max = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sums = [0.0f32; LANES];
    let mut c = x.chunks_exact_mut(LANES);
    for xs in &mut c {
        for j in 0..LANES {
            xs[j] = exp(xs[j] - max);
            sums[j] += xs[j];
        }
    }
    for v in c.into_remainder() {
        *v = exp(*v - max);
        sums[0] += *v;
    }
    (max, sums.iter().sum::<f32>())
}

/// Positions per span of attention: a query's positions are taken in spans of this many
/// (the last one shorter), each giving a partial result ([`partial_len`] floats: the
/// span's maximum score `m`, its weight sum `l`, its weighted values `o`), which
/// [`combine_spans`] joins. Spans let one decoded token's attention split by positions
/// (each task streams a stretch of the cache) and still compute the same bits as a
/// prompt, whatever the split: the spans are fixed, not the tasks.
pub const SPAN: usize = 256;

/// Floats of one span's partial result for one head: `m`, `l`, then `head_dim` values.
pub fn partial_len(head_dim: usize) -> usize {
    head_dim + 2
}

/// `out = Σ_j e^(m_j - M) · o_j / Σ_j e^(m_j - M) · l_j` over the `spans` partial results
/// at `parts[j · stride..]` (`M` the largest `m_j`), in span order: softmax attention
/// over all the spans' positions.
#[inline(always)]
pub fn combine_spans(parts: &[f32], stride: usize, spans: usize, out: &mut [f32]) {
    let hd = out.len();
    let part = |j: usize| &parts[j * stride..j * stride + hd + 2];
    let max = (0..spans).fold(f32::NEG_INFINITY, |a, j| a.max(part(j)[0]));
    out.fill(0.0);
    let mut l = 0.0f32;
    for j in 0..spans {
        let p = part(j);
        let w = exp(p[0] - max);
        l += w * p[1];
        for (o, &v) in out.iter_mut().zip(&p[2..]) {
            *o += w * v;
        }
    }
    let inv = 1.0 / l;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Positions per block of the key cache: one cache line of f32 lanes. The value cache
/// has blocks of as many positions.
pub const KEY_BLOCK: usize = 16;

/// Where the values of position `pos` for the kv head whose values start at `kv0`
/// (`head · head_dim`) begin in a layer's value cache of `kv_dim` floats per position:
/// blocks of [`KEY_BLOCK`] positions, in a block per kv head its positions' values one
/// after another. So a kv head's values are contiguous over a block (6 KB for 16 f32
/// positions of 96 dimensions), and a run of heads over a block one stretch.
#[inline(always)]
pub fn value_at(pos: usize, kv0: usize, kv_dim: usize, head_dim: usize) -> usize {
    pos / KEY_BLOCK * KEY_BLOCK * kv_dim + KEY_BLOCK * kv0 + pos % KEY_BLOCK * head_dim
}

/// How attention reads the cached keys and values: the cache's element type, and its
/// widening to f32 ([`KEY_BLOCK`] lanes at a time, or one value). Widening is exact (f16
/// and f32 values are f32 values), so how a kernel set widens never changes a result.
pub trait KvRead {
    type Elem: KvElem;
    /// Elements per 64-byte cache line (a prefetch's step).
    const PER_LINE: usize = 64 / std::mem::size_of::<Self::Elem>();
    /// The first [`KEY_BLOCK`] elements of `src` as f32.
    fn lanes(src: &[Self::Elem]) -> [f32; KEY_BLOCK];
}

/// A value of the KV cache: f32, or f16 as its bits.
pub trait KvElem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_to_f32(self)
    }
}

/// An f32 cache: read as it is.
pub struct F32Kv;

impl KvRead for F32Kv {
    type Elem = f32;
    #[inline(always)]
    fn lanes(src: &[f32]) -> [f32; KEY_BLOCK] {
        let mut out = [0.0; KEY_BLOCK];
        out.copy_from_slice(&src[..KEY_BLOCK]);
        out
    }
}

/// An f16 cache (IEEE binary16 bits), widened by [`f16_to_f32`] (plain integer and float
/// operations, which vectorise at any width).
pub struct F16Kv;

impl KvRead for F16Kv {
    type Elem = u16;
    #[inline(always)]
    fn lanes(src: &[u16]) -> [f32; KEY_BLOCK] {
        let src: &[u16; KEY_BLOCK] = src[..KEY_BLOCK].try_into().expect("16 lanes");
        std::array::from_fn(|i| f16_to_f32(src[i]))
    }
}

/// The f32 value of IEEE binary16 bits `h`, exactly: its exponent and mantissa moved to
/// f32 positions form a float 2^-112 times the value (a subnormal one for f16 subnormals),
/// so one multiplication by 2^112 (exact) gives it; infinities and NaNs get the f32 maximum
/// exponent instead; then the sign.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = (h & 0x7FFF) << 13;
    let finite = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if h & 0x7C00 == 0x7C00 { magnitude | 0x7F80_0000 } else { finite };
    f32::from_bits(bits | (h & 0x8000) << 16)
}

/// Floats of attention scratch for `heads` query heads over `n` positions (see
/// [`attend_heads`]): their scores.
pub fn attend_scratch_len(heads: usize, _head_dim: usize, n: usize) -> usize {
    heads * n.next_multiple_of(KEY_BLOCK)
}

/// Which query heads an [`attend_heads`] call computes, and where their keys and values are.
#[derive(Clone, Copy, Debug)]
pub struct HeadsAt {
    pub head_dim: usize,
    /// The first query head in `q`.
    pub first_head: usize,
    /// Query heads per kv head.
    pub group: usize,
    /// Floats per position of all kv heads.
    pub kv_dim: usize,
    /// The score scale, `1/sqrt(head_dim)`.
    pub scale: f32,
}

/// Causal attention of the query heads `first_head..` in `q` (`head_dim` floats each) over
/// one span of positions `start..end` of one layer's cache (`start` a multiple of [`SPAN`],
/// `end - start` at most `SPAN`): per head, its partial result ([`partial_len`] floats in
/// `parts`: see [`SPAN`]; [`combine_spans`] of all the spans up to a query's position gives
/// `softmax(scale · q·k) · v`). Query head `h` reads kv head `h / group`.
///
/// The layer's cache is laid out so that positions `0..n` of all kv heads are two
/// contiguous stretches (the keys a call reads front to back, the values head by head):
/// - `keys`: blocks of [`KEY_BLOCK`] positions, `KEY_BLOCK · kv_dim` floats each; in a
///   block, per kv head, per dimension, one row of 16 lanes (one per position), so a score
///   needs no horizontal sum. The last block runs past `end` into unused cache; those
///   scores are ignored.
/// - `values`: blocks of [`KEY_BLOCK`] positions like the keys (the last one whole),
///   `KEY_BLOCK · kv_dim` floats each; in a block, per kv head, its positions' `head_dim`
///   values one after another ([`value_at`]). So a head's values are one stretch per
///   block. (Stored per position, all kv heads side by side, a head's values were a few
///   hundred bytes every `kv_dim` floats, and read well below the keys' rate: BENCHMARKS.md.)
///
/// `scratch` holds [`attend_scratch_len`] floats. Every lane sums in a fixed order with
/// fused multiply-adds ([`mul_add`]): a score over the dimensions in order, from 0, then
/// times the scale; a span's weighted value over its positions in order, from 0. So the
/// result depends neither on how heads are grouped into calls nor on the vector width:
/// every kernel set inlines this and computes the same bits, and [`attend_tokens`] the
/// same again.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attend_heads<K: KvRead>(
    q: &[f32],
    heads_at: HeadsAt,
    keys: &[K::Elem],
    values: &[K::Elem],
    scratch: &mut [f32],
    start: usize,
    end: usize,
    parts: &mut [f32],
) {
    let HeadsAt { head_dim: hd, first_head, group, kv_dim, scale } = heads_at;
    assert!(start.is_multiple_of(SPAN) && start < end && end - start <= SPAN, "attend_heads: span {start}..{end}");
    let heads = q.len() / hd;
    let (n, pl) = (end - start, partial_len(hd));
    let parts = &mut parts[..heads * pl];
    let padded = n.next_multiple_of(KEY_BLOCK);
    let scores = &mut scratch[..attend_scratch_len(heads, hd, n)];
    let key_rows = KeyRows::<K> { q, hd, heads, first_head, group, keys, kv_dim, first_block: start / KEY_BLOCK };

    // Scores block by block, each block's heads in turn (the keys front to back), four
    // (block, head) rows at a time as independent sums.
    let rows = heads * (padded / KEY_BLOCK);
    let mut j = 0;
    while j < rows {
        j += match rows - j {
            1 => key_rows.scores::<1>(j, scale, scores, padded),
            2 => key_rows.scores::<2>(j, scale, scores, padded),
            3 => key_rows.scores::<3>(j, scale, scores, padded),
            _ => key_rows.scores::<4>(j, scale, scores, padded),
        };
    }
    for (sc, part) in scores.chunks_exact_mut(padded).zip(parts.chunks_exact_mut(pl)) {
        let (m, l) = span_weights(&mut sc[..n]);
        part[0] = m;
        part[1] = l;
        part[2..].fill(0.0);
    }

    // Weighted values, into each head's partial result: head by head, the sums of 32
    // dimensions in registers over [`VALUE_BLOCK`] positions at a time (the sums pass
    // through `part` between blocks: the same operations in the same order), each block
    // asking for the next one's values first, as [`attend_tokens`] does.
    let mut w = [0f32; SPAN];
    for (h, part) in parts.chunks_exact_mut(pl).enumerate() {
        w[..n].copy_from_slice(&scores[h * padded..h * padded + n]);
        let kv0 = key_rows.kv_at(h);
        let rows = ValueRows::<K> { values, kv0, kv_dim, hd, start };
        prefetch_values::<K>(values, kv0, kv_dim, hd, start..(start + VALUE_BLOCK).min(end));
        for s0 in (start..end).step_by(VALUE_BLOCK) {
            let s1 = (s0 + VALUE_BLOCK).min(end);
            prefetch_values::<K>(values, kv0, kv_dim, hd, s1..(s1 + VALUE_BLOCK).min(end));
            rows.tiles::<1, 32>(std::slice::from_ref(&w), s0..s1, &mut part[2..]);
        }
    }
}

/// Asks for the values of kv head `kv0` (at `kv0` in a position's values) at `positions`.
/// A head's values are a stretch per key block, `KEY_BLOCK · kv_dim` elements apart,
/// which the hardware prefetchers do not follow (BENCHMARKS.md).
#[inline(always)]
fn prefetch_values<K: KvRead>(
    values: &[K::Elem],
    kv0: usize,
    kv_dim: usize,
    hd: usize,
    positions: std::ops::Range<usize>,
) {
    for s in positions {
        let at = values.as_ptr().wrapping_add(value_at(s, kv0, kv_dim, hd));
        for l in (0..hd).step_by(K::PER_LINE) {
            prefetch(at.wrapping_add(l));
        }
    }
}

/// Positions per block of values in [`attend_heads`] and [`attend_tokens`] (a divisor of
/// [`SPAN`]): the weighted values' tiles keep their sums in registers over this many positions.
pub const VALUE_BLOCK: usize = 32;

/// Query tokens per [`attend_tokens`] call (a multiple of 8).
pub const ATTEND_TOKENS: usize = 32;

/// Floats of scratch for [`attend_tokens`] over causal lengths up to `n`: the queries
/// transposed, the scores of [`ATTEND_TOKENS`] tokens over one span, their weighted values
/// over one span, and every token's partial results.
pub fn attend_tokens_scratch_len(head_dim: usize, n: usize) -> usize {
    ATTEND_TOKENS * (2 * head_dim + SPAN + n.div_ceil(SPAN) * partial_len(head_dim))
}

/// Causal attention of one query head (`at.first_head`) for `tokens` ≤ [`ATTEND_TOKENS`]
/// consecutive positions of a prompt: token `t` (query `q[t · head_dim..]`, output
/// `out[t · head_dim..]`) attends to positions `0..n0 + t`. `q` holds [`ATTEND_TOKENS`]
/// rows (those past `tokens` are read but ignored: zeros, say).
///
/// Per span, the same arithmetic in the same order as [`attend_heads`] for each token
/// alone, and the same [`combine_spans`], so the same bits (a prompt equals its tokens
/// decoded one at a time), but each key row and each value is read once for many tokens:
/// a prompt after a long context reads its cache [`ATTEND_TOKENS`] times less, and the
/// sums of a tile of tokens stay in registers.
///
/// The kernel set chooses its tiles for its registers; they change no result:
/// `SCORE_TOKENS` × `SCORE_BLOCKS` (a divisor of [`ATTEND_TOKENS`] × any) is the tile of
/// scores, tokens × key blocks of [`KEY_BLOCK`] positions; `VALUE_TOKENS` × `VALUE_DIMS`
/// the tile of weighted values, tokens × dimensions ([`value_tile`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attend_tokens<
    K: KvRead,
    const SCORE_TOKENS: usize,
    const SCORE_BLOCKS: usize,
    const VALUE_TOKENS: usize,
    const VALUE_DIMS: usize,
>(
    q: &[f32],
    at: HeadsAt,
    keys: &[K::Elem],
    values: &[K::Elem],
    scratch: &mut [f32],
    n0: usize,
    tokens: usize,
    out: &mut [f32],
) {
    const {
        assert!(
            SCORE_TOKENS > 0 && ATTEND_TOKENS.is_multiple_of(SCORE_TOKENS) && SCORE_BLOCKS > 0,
            "SCORE_TOKENS must divide ATTEND_TOKENS"
        );
        assert!(VALUE_TOKENS > 0 && VALUE_DIMS > 0, "value tile")
    };
    let HeadsAt { head_dim: hd, first_head, group, kv_dim, scale } = at;
    assert!((1..=ATTEND_TOKENS).contains(&tokens) && n0 >= 1, "attend_tokens: {tokens} tokens from length {n0}");
    let n_max = n0 + tokens - 1;
    let (spans, pl) = (n_max.div_ceil(SPAN), partial_len(hd));
    let (qt, rest) = scratch[..attend_tokens_scratch_len(hd, n_max)].split_at_mut(ATTEND_TOKENS * hd);
    let (scores, rest) = rest.split_at_mut(ATTEND_TOKENS * SPAN);
    let (acc, parts) = rest.split_at_mut(ATTEND_TOKENS * hd);
    let kv0 = first_head / group * hd;
    // The queries transposed: row `d` holds dimension `d` of every token, so a tile's
    // tokens are one load address apart.
    let (qt, _) = qt.as_chunks_mut::<ATTEND_TOKENS>();
    for (t, q) in q[..ATTEND_TOKENS * hd].chunks_exact(hd).enumerate() {
        for (row, &x) in qt.iter_mut().zip(q) {
            row[t] = x;
        }
    }
    let qt: &[[f32; ATTEND_TOKENS]] = qt;
    // Token `t`'s positions in a span that ends at `end`: up to `n0 + t`.
    let length = |t: usize, end: usize| (n0 + t).min(end);

    for j in 0..spans {
        let (start, end) = (j * SPAN, ((j + 1) * SPAN).min(n_max));
        // Scores: tiles of `SCORE_BLOCKS` blocks (whose key rows come from memory once,
        // then from L1) by `SCORE_TOKENS` tokens; lane `i` of a token sums `q[d] · key`
        // over `d` in order, as `attend_heads`.
        let blocks = (end - start).div_ceil(KEY_BLOCK);
        let mut b = 0;
        // One tile of `$n` blocks at block `b` of the span; returns `$n`.
        macro_rules! tile {
            ($n:expr) => {
                score_tile::<K, SCORE_TOKENS, { $n }>(
                    qt,
                    keys,
                    kv_dim,
                    kv0,
                    start / KEY_BLOCK + b,
                    b,
                    scale,
                    tokens,
                    scores,
                )
            };
        }
        while b < blocks {
            b += match blocks - b {
                1 => tile!(1),
                2 if SCORE_BLOCKS >= 2 => tile!(2),
                r if r < SCORE_BLOCKS => tile!(1),
                _ => tile!(SCORE_BLOCKS),
            };
        }
        for t in 0..tokens {
            let n = length(t, end);
            if start < n {
                let (m, l) = span_weights(&mut scores[t * SPAN..t * SPAN + n - start]);
                parts[(t * spans + j) * pl] = m;
                parts[(t * spans + j) * pl + 1] = l;
            }
        }

        // Weighted values, as in `attend_heads`: each token's sum over its positions in
        // order. Blocks of `VALUE_BLOCK` positions (a block's values stay in L1 for all the
        // tokens); in a block, tiles of `VALUE_TOKENS` tokens over the positions all of
        // them take, then each token alone over the rest of its positions.
        let acc = &mut acc[..tokens * hd];
        acc.fill(0.0);
        let (weights, _) = scores.as_chunks::<SPAN>();
        let first = (0..tokens).find(|&t| length(t, end) > start).unwrap_or(tokens);
        for s0 in (start..end).step_by(VALUE_BLOCK) {
            let s1 = (s0 + VALUE_BLOCK).min(end);
            // The next block's values.
            prefetch_values::<K>(values, kv0, kv_dim, hd, s1..(s1 + VALUE_BLOCK).min(n_max));
            let values = ValueRows::<K> { values, kv0, kv_dim, hd, start };
            let mut t = first;
            while t < tokens {
                let count = VALUE_TOKENS.min(tokens - t);
                // Tokens t.. take positions up to length(t) at least (lengths grow with t).
                let common = length(t, end).clamp(s0, s1);
                if count == VALUE_TOKENS {
                    values.tiles::<VALUE_TOKENS, VALUE_DIMS>(
                        &weights[t..t + VALUE_TOKENS],
                        s0..common,
                        &mut acc[t * hd..],
                    );
                } else {
                    for u in t..t + count {
                        values.tiles::<1, VALUE_DIMS>(&weights[u..u + 1], s0..common, &mut acc[u * hd..]);
                    }
                }
                for u in t..t + count {
                    let own = length(u, end).clamp(common, s1);
                    values.tiles::<1, VALUE_DIMS>(&weights[u..u + 1], common..own, &mut acc[u * hd..]);
                }
                t += count;
            }
        }
        for t in first..tokens {
            let at = (t * spans + j) * pl + 2;
            parts[at..at + hd].copy_from_slice(&acc[t * hd..(t + 1) * hd]);
        }
    }
    for t in 0..tokens {
        let spans_t = (n0 + t).div_ceil(SPAN);
        combine_spans(&parts[t * spans * pl..], pl, spans_t, &mut out[t * hd..(t + 1) * hd]);
    }
}

/// The scores of `T` tokens from `qt[..][t0..]` (the queries transposed: see
/// [`attend_tokens`]) for tokens `0..tokens` in steps of `T`, over `B` key blocks from the
/// cache's block `block` (the span's block `b`), into `scores[t · SPAN + 16b..]`. Lane `i`
/// sums `q[d] · key` over `d` in order with [`mul_add`], from 0, then times `scale`, as
/// [`KeyRows::scores`]. Returns `B`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn score_tile<K: KvRead, const T: usize, const B: usize>(
    qt: &[[f32; ATTEND_TOKENS]],
    keys: &[K::Elem],
    kv_dim: usize,
    kv0: usize,
    block: usize,
    b: usize,
    scale: f32,
    tokens: usize,
    scores: &mut [f32],
) -> usize {
    let hd = qt.len();
    let rows: [&[K::Elem]; B] = std::array::from_fn(|u| {
        let first = (block + u) * KEY_BLOCK * kv_dim + kv0 * KEY_BLOCK;
        &keys[first..first + hd * KEY_BLOCK]
    });
    // This head's rows of the block after the tile: a few kilobytes further on than the
    // prefetchers look.
    let next = keys.as_ptr().wrapping_add((block + B) * KEY_BLOCK * kv_dim + kv0 * KEY_BLOCK);
    for l in (0..hd * KEY_BLOCK).step_by(K::PER_LINE) {
        prefetch(next.wrapping_add(l));
    }
    for t0 in (0..tokens).step_by(T) {
        let mut sum = [[[0f32; KEY_BLOCK]; B]; T];
        for (d, q) in qt.iter().enumerate() {
            let q: &[f32; T] = q[t0..t0 + T].try_into().expect("T tokens");
            let key: [[f32; KEY_BLOCK]; B] =
                std::array::from_fn(|u| K::lanes(&rows[u][d * KEY_BLOCK..(d + 1) * KEY_BLOCK]));
            unrolled!(T, t => {
                let qd = q[t];
                for (sum, key) in sum[t].iter_mut().zip(&key) {
                    for i in 0..KEY_BLOCK {
                        sum[i] = mul_add(qd, key[i], sum[i]);
                    }
                }
            });
        }
        for (t, sum) in sum.iter().enumerate().take(tokens - t0) {
            for (u, sum) in sum.iter().enumerate() {
                let at = (t0 + t) * SPAN + (b + u) * KEY_BLOCK;
                for (sc, a) in scores[at..at + KEY_BLOCK].iter_mut().zip(sum) {
                    *sc = a * scale;
                }
            }
        }
    }
    B
}

/// One head's values in the cache, for [`attend_tokens`]' span from `start`.
struct ValueRows<'a, K: KvRead> {
    values: &'a [K::Elem],
    kv0: usize,
    kv_dim: usize,
    hd: usize,
    start: usize,
}

impl<K: KvRead> ValueRows<'_, K> {
    /// For `T` tokens whose softmax weights are `weights[k][p - start]` and whose sums
    /// are `acc[k · hd..][..hd]`: `acc += a_p · v_p` over the positions `p` in `positions`,
    /// in order, with [`mul_add`]. `W` dimensions of all `T` tokens' sums stay in
    /// registers over the positions, and each value loaded serves all `T` tokens; the
    /// dimensions past a multiple of `W` go 16 at a time, then one at a time.
    #[inline(always)]
    fn tiles<const T: usize, const W: usize>(
        &self,
        weights: &[[f32; SPAN]],
        positions: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        if positions.is_empty() {
            return;
        }
        let hd = self.hd;
        let weights: &[[f32; SPAN]; T] = weights.try_into().expect("T tokens");
        let wide = hd / W * W;
        for d0 in (0..wide).step_by(W) {
            self.tile::<T, W>(weights, positions.clone(), acc, d0);
        }
        let lanes = wide + (hd - wide) / KEY_BLOCK * KEY_BLOCK;
        for d0 in (wide..lanes).step_by(KEY_BLOCK) {
            self.tile::<T, KEY_BLOCK>(weights, positions.clone(), acc, d0);
        }
        for d0 in lanes..hd {
            self.tile::<T, 1>(weights, positions.clone(), acc, d0);
        }
    }

    /// [`ValueRows::tiles`] for dimensions `d0..d0 + W`.
    #[inline(always)]
    fn tile<const T: usize, const W: usize>(
        &self,
        weights: &[[f32; SPAN]; T],
        positions: std::ops::Range<usize>,
        acc: &mut [f32],
        d0: usize,
    ) {
        let hd = self.hd;
        let mut r = [[0f32; W]; T];
        for (k, r) in r.iter_mut().enumerate() {
            r.copy_from_slice(&acc[k * hd + d0..k * hd + d0 + W]);
        }
        for p in positions {
            let row = value_at(p, self.kv0, self.kv_dim, hd) + d0;
            let v = &self.values[row..row + W];
            let v: [f32; W] = if W.is_multiple_of(KEY_BLOCK) {
                let mut x = [0f32; W];
                for (x, v) in x.chunks_exact_mut(KEY_BLOCK).zip(v.chunks_exact(KEY_BLOCK)) {
                    x.copy_from_slice(&K::lanes(v));
                }
                x
            } else {
                std::array::from_fn(|i| v[i].to_f32())
            };
            let s = p - self.start;
            unrolled!(T, k => {
                let a = weights[k][s];
                for i in 0..W {
                    r[k][i] = mul_add(a, v[i], r[k][i]);
                }
            });
        }
        for (k, r) in r.iter().enumerate() {
            acc[k * hd + d0..k * hd + d0 + W].copy_from_slice(r);
        }
    }
}

/// The key rows and queries of [`attend_heads`]: row `j` is block `j / heads`, head `j % heads`.
struct KeyRows<'a, K: KvRead> {
    q: &'a [f32],
    hd: usize,
    heads: usize,
    first_head: usize,
    group: usize,
    keys: &'a [K::Elem],
    kv_dim: usize,
    /// The block of the span's first position.
    first_block: usize,
}

impl<K: KvRead> KeyRows<'_, K> {
    /// Where the kv head of query head `first_head + h` starts in a key block's or a
    /// position's values.
    #[inline(always)]
    fn kv_at(&self, h: usize) -> usize {
        (self.first_head + h) / self.group * self.hd
    }

    /// Scores of rows `j..j + ROWS_AT_ONCE` into `scores` (`padded` per head); returns `ROWS_AT_ONCE`. Lane `i`
    /// of a row sums `q[d] · key` over `d` in order.
    #[inline(always)]
    fn scores<const ROWS_AT_ONCE: usize>(&self, j: usize, scale: f32, scores: &mut [f32], padded: usize) -> usize {
        let (hd, heads) = (self.hd, self.heads);
        let block_head = |u: usize| ((j + u) / heads, (j + u) % heads);
        let rows: [&[K::Elem]; ROWS_AT_ONCE] = std::array::from_fn(|u| {
            let (b, h) = block_head(u);
            let start = (self.first_block + b) * KEY_BLOCK * self.kv_dim + self.kv_at(h) * KEY_BLOCK;
            &self.keys[start..start + hd * KEY_BLOCK]
        });
        let qs: [&[f32]; ROWS_AT_ONCE] =
            std::array::from_fn(|u| &self.q[block_head(u).1 * hd..(block_head(u).1 + 1) * hd]);
        // The same heads' rows in the next block, which this call's task reads after the
        // rest of its heads in this block: the hardware prefetchers alone leave these reads
        // waiting, and a task's heads are only part of each block.
        let ahead: [*const K::Elem; ROWS_AT_ONCE] = std::array::from_fn(|u| {
            let (b, h) = block_head(u);
            self.keys
                .as_ptr()
                .wrapping_add((self.first_block + b + 1) * KEY_BLOCK * self.kv_dim + self.kv_at(h) * KEY_BLOCK)
        });
        // Prefetch a line per dimension of f32 keys; of f16 keys, every other dimension.
        let line = K::PER_LINE / KEY_BLOCK;
        let mut acc = [[0f32; KEY_BLOCK]; ROWS_AT_ONCE];
        for d in 0..hd {
            if heads > 1 && d % line.max(1) == 0 {
                for p in ahead {
                    prefetch(p.wrapping_add(d * KEY_BLOCK));
                }
            }
            for u in 0..ROWS_AT_ONCE {
                let (qd, key) = (qs[u][d], K::lanes(&rows[u][d * KEY_BLOCK..(d + 1) * KEY_BLOCK]));
                for i in 0..KEY_BLOCK {
                    acc[u][i] = mul_add(qd, key[i], acc[u][i]);
                }
            }
        }
        for (u, acc) in acc.iter().enumerate() {
            let (b, h) = block_head(u);
            for (sc, a) in scores[h * padded + b * KEY_BLOCK..h * padded + (b + 1) * KEY_BLOCK].iter_mut().zip(acc) {
                *sc = a * scale;
            }
        }
        ROWS_AT_ONCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random attention inputs in the cache layout of `attend_heads`.
    fn attention_case(hd: usize, n_heads: usize, group: usize, n: usize, seed: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut rnd = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
        };
        let kv_dim = n_heads / group * hd;
        let q = (0..n_heads * hd).map(|_| rnd() * 3.0).collect();
        let keys = (0..n.next_multiple_of(KEY_BLOCK) * kv_dim).map(|_| rnd()).collect();
        let values = (0..n.next_multiple_of(KEY_BLOCK) * kv_dim).map(|_| rnd()).collect();
        (q, keys, values)
    }

    /// Attention of the query heads in `q` over positions `0..n` as a decoded token runs
    /// it: every span's partial results for all heads in one call, then combined.
    fn attend_spans<K: KvRead>(q: &[f32], at: HeadsAt, keys: &[K::Elem], values: &[K::Elem], n: usize) -> Vec<f32> {
        let (hd, heads, pl) = (at.head_dim, q.len() / at.head_dim, partial_len(at.head_dim));
        let spans = n.div_ceil(SPAN);
        let mut parts = vec![f32::NAN; spans * heads * pl];
        let mut scratch = vec![f32::NAN; attend_scratch_len(heads, hd, SPAN)];
        for (j, part) in parts.chunks_exact_mut(heads * pl).enumerate() {
            attend_heads::<K>(q, at, keys, values, &mut scratch, j * SPAN, ((j + 1) * SPAN).min(n), part);
        }
        let mut out = vec![0.0; heads * hd];
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            combine_spans(&parts[h * pl..], heads * pl, spans, out);
        }
        out
    }

    /// Attention over a cache of `K`, against the f64 definition over the values the cache
    /// holds, and head by head against all heads at once (the same bits).
    fn check_attention<K: KvRead>(narrow: impl Fn(f32) -> K::Elem) {
        let cases = [(96, 4, 1, 37), (24, 6, 2, 1), (16, 4, 4, 16), (40, 2, 1, 70), (32, 3, 3, 5), (32, 2, 1, 600)];
        for (hd, n_heads, group, n) in cases {
            let (q, keys, values) = attention_case(hd, n_heads, group, n, (hd * n) as u32);
            let (keys, values): (Vec<K::Elem>, Vec<K::Elem>) =
                (keys.into_iter().map(&narrow).collect(), values.into_iter().map(&narrow).collect());
            let kv_dim = n_heads / group * hd;
            let scale = 1.0 / (hd as f32).sqrt();
            let at = |first_head| HeadsAt { head_dim: hd, first_head, group, kv_dim, scale };
            let all = attend_spans::<K>(&q, at(0), &keys, &values, n);
            for h in 0..n_heads {
                // One head alone: the same bits.
                let one = attend_spans::<K>(&q[h * hd..(h + 1) * hd], at(h), &keys, &values, n);
                assert_eq!(one, all[h * hd..(h + 1) * hd], "hd {hd} head {h}");
                // The definition in f64, from the layout's description.
                let kvh = h / group;
                let key =
                    |p: usize, d: usize| f64::from(keys[p / 16 * 16 * kv_dim + (kvh * hd + d) * 16 + p % 16].to_f32());
                let sc: Vec<f64> = (0..n)
                    .map(|p| (0..hd).map(|d| f64::from(q[h * hd + d]) * key(p, d)).sum::<f64>() * f64::from(scale))
                    .collect();
                let max = sc.iter().cloned().fold(f64::MIN, f64::max);
                let w: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = w.iter().sum();
                for d in 0..hd {
                    let value =
                        |p: usize| f64::from(values[p / 16 * 16 * kv_dim + (kvh * 16 + p % 16) * hd + d].to_f32());
                    let want: f64 = (0..n).map(|p| w[p] / total * value(p)).sum();
                    assert!((f64::from(all[h * hd + d]) - want).abs() < 1e-5, "hd {hd} head {h} dim {d}");
                }
            }
        }
    }

    #[test]
    fn attention_matches_the_definition_however_heads_are_grouped() {
        check_attention::<F32Kv>(|x| x);
        check_attention::<F16Kv>(|x| half::f16::from_f32(x).to_bits());
    }

    /// A prompt's tokens attended together give the bits of each token decoded alone.
    fn check_tokens_together<
        K: KvRead,
        const SCORE_TOKENS: usize,
        const SCORE_BLOCKS: usize,
        const VALUE_TOKENS: usize,
        const VALUE_DIMS: usize,
    >(
        narrow: impl Fn(f32) -> K::Elem,
    ) {
        for (hd, n_heads, group, n0, tokens) in [
            (64, 4, 1, 1, 8),
            (64, 2, 2, 30, 3),
            (24, 6, 2, 5, 8),
            (40, 2, 1, 70, 1),
            (96, 3, 3, 17, 5),
            (16, 2, 1, 3, 8),
            (64, 2, 1, 40, 32),
            (32, 2, 2, 9, 19),
            (96, 1, 1, 1, 32),
            (64, 2, 1, 240, 32),
            (40, 2, 2, 500, 27),
            // A prompt of one token; one token after a cache reused past a span.
            (32, 4, 2, 1, 1),
            (32, 2, 2, 300, 1),
        ] {
            let n = n0 + tokens - 1;
            let (q, keys, values) = attention_case(hd, n_heads * ATTEND_TOKENS, group, n, (hd * n + tokens) as u32);
            let kv_dim = n_heads / group * hd;
            let keys: Vec<K::Elem> =
                keys[..n.next_multiple_of(KEY_BLOCK) * kv_dim].iter().map(|&x| narrow(x)).collect();
            let values: Vec<K::Elem> =
                values[..n.next_multiple_of(KEY_BLOCK) * kv_dim].iter().map(|&x| narrow(x)).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            for h in 0..n_heads {
                let at = HeadsAt { head_dim: hd, first_head: h, group, kv_dim, scale };
                let q = &q[h * ATTEND_TOKENS * hd..(h + 1) * ATTEND_TOKENS * hd];
                // Whatever the scratch holds must not matter.
                let mut scratch = vec![f32::NAN; attend_tokens_scratch_len(hd, n)];
                let mut together = vec![f32::NAN; ATTEND_TOKENS * hd];
                attend_tokens::<K, SCORE_TOKENS, SCORE_BLOCKS, VALUE_TOKENS, VALUE_DIMS>(
                    q,
                    at,
                    &keys,
                    &values,
                    &mut scratch,
                    n0,
                    tokens,
                    &mut together,
                );
                for t in 0..tokens {
                    let alone = attend_spans::<K>(&q[t * hd..(t + 1) * hd], at, &keys, &values, n0 + t);
                    assert_eq!(alone, together[t * hd..(t + 1) * hd], "hd {hd} head {h} token {t} of {tokens}");
                }
                assert!(together[tokens * hd..].iter().all(|v| v.is_nan()), "wrote past its tokens");
            }
        }
    }

    #[test]
    fn prompt_tokens_attended_together_equal_each_alone() {
        // Every kernel set's tiles (see `float_ops!`).
        check_tokens_together::<F32Kv, 4, 1, 4, 16>(|x| x);
        check_tokens_together::<F16Kv, 4, 1, 4, 16>(|x| half::f16::from_f32(x).to_bits());
        check_tokens_together::<F32Kv, 8, 2, 8, 32>(|x| x);
        check_tokens_together::<F16Kv, 8, 2, 8, 32>(|x| half::f16::from_f32(x).to_bits());
        // Other tiles: one token, odd numbers, three blocks, the widest dimensions.
        check_tokens_together::<F32Kv, 1, 3, 1, 96>(|x| x);
        check_tokens_together::<F32Kv, 16, 3, 3, 48>(|x| x);
        check_tokens_together::<F16Kv, 2, 4, 5, 8>(|x| half::f16::from_f32(x).to_bits());
    }

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_to_f32(h), half::f16::from_bits(h).to_f32());
            if want.is_nan() {
                assert!(got.is_nan() && got.to_bits() >> 31 == want.to_bits() >> 31, "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
        let lanes: Vec<u16> = (0..16).map(|i| 0x3C00 + 0x0401 * i).collect();
        let want: Vec<f32> = lanes.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
        assert_eq!(F16Kv::lanes(&lanes), want[..]);
    }
}
