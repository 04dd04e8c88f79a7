//! The small numeric operations of the forward pass, each on one token's vector.

use crate::kernels::{prefetch, Kernels};
use tern_format::Encoding;

/// `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let inv = rms_inv(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// Round half to even for |v| < 2^22, without a libm call: adding 1.5·2^23 moves `v`
/// where the float spacing is exactly 1, so the addition itself rounds to nearest with
/// ties to even (1.5·2^23 is even), and subtracting it back is exact.
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    (v + ROUNDER) - ROUNDER
}

/// 1.5 · 2^23: adding it rounds any |v| < 2^22 to an integer, half to even.
const ROUNDER: f32 = 12_582_912.0;

/// Per-token absmax int8 quantization, exactly as BitLinear defines it:
/// `s_x = 127 / max(max|x|, 1e-5)`, `xq = clamp(round_half_even(x * s_x), -128, 127)`.
/// Writes `x.len()` values to `xq` and zeros to the rest (the block padding).
/// Returns `(s_x, sum(xq))`.
pub fn quantize_activations(x: &[f32], xq: &mut [i8]) -> (f32, i32) {
    quantize_normed(x, &vec![1.0; x.len()], None, xq)
}

/// Lanes of the fixed-order float reductions below: the same grouping at every SIMD
/// width, so every kernel set computes the same bits.
const LANES: usize = 16;

/// [`quantize_activations`] of the row RMS-normalised with `gain` (`norm_eps: None`: of
/// `x` itself, with a gain of ones), without storing it: each value `x[i] · inv · gain[i]`
/// is recomputed with the same operations as [`rmsnorm`]. Inlined into each kernel set's
/// `quantize_normed`; every loop is a plain element-wise pass or an integer reduction,
/// which vectorise at any width.
#[inline(always)]
pub fn quantize_normed(x: &[f32], gain: &[f32], norm_eps: Option<f32>, xq: &mut [i8]) -> (f32, i32) {
    let n = x.len();
    let g = &gain[..n];
    let inv = match norm_eps {
        Some(eps) => rms_inv(x, eps),
        None => 1.0,
    };
    // The maximum of non-negative floats is the maximum of their bit patterns (an integer
    // reduction, exact in any order); NaN is ignored, as `f32::max` would.
    let mut max_bits = 0u32;
    for (&v, &gg) in x.iter().zip(g) {
        // |v| as bits, and 0 for a NaN (whose bits are above infinity's).
        let b = (v * inv * gg).to_bits() & 0x7FFF_FFFF;
        max_bits = max_bits.max(b & u32::from(b <= 0x7F80_0000).wrapping_neg());
    }
    let s_x = 127.0 / f32::from_bits(max_bits).max(1e-5);
    // round_half_even(clamp(v · s_x, -128, 127)), which equals clamping after rounding
    // (the bounds are integers). Adding 1.5·2^23 rounds half to even (see
    // `round_half_even_small`) and leaves the integer r in the low mantissa bits: the
    // float's bits are 0x4B40_0000 + r, whose low byte is r as i8. No float-to-int
    // conversion, so it vectorises; a NaN gives some byte, never undefined behaviour.
    let (xq, pad) = xq.split_at_mut(n);
    pad.fill(0);
    let mut sum = 0i32;
    for ((o, &v), &gg) in xq.iter_mut().zip(x).zip(g) {
        *o = (((v * inv * gg * s_x).clamp(-128.0, 127.0) + ROUNDER).to_bits() as u8) as i8;
        sum += i32::from(*o);
    }
    (s_x, sum)
}

/// `1 / sqrt(mean(x^2) + eps)`. The squares are summed in f64 (in a fixed order of
/// [`LANES`] partial sums), so the norm is as close to an exact one as f32 output allows:
/// a rounding difference here can flip an int8 activation downstream.
#[inline(always)]
pub fn rms_inv(x: &[f32], eps: f32) -> f32 {
    let mut a = [0.0f64; LANES];
    let c = x.chunks_exact(LANES);
    let r = c.remainder();
    for xs in c {
        for j in 0..LANES {
            a[j] += f64::from(xs[j]) * f64::from(xs[j]);
        }
    }
    for &v in r {
        a[0] += f64::from(v) * f64::from(v);
    }
    let ss = a.iter().sum::<f64>() / x.len() as f64;
    (1.0 / (ss + f64::from(eps)).sqrt()) as f32
}

/// How a BitLinear's rescaled outputs `y = acc · f` reach their destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// `dst = y`
    Store,
    /// `dst += y` (the residual connection)
    Add,
    /// `dst = silu(dst) · y` (the gated MLP, `dst` holding the gate projection)
    GateSilu,
    /// `dst = relu(dst)² · y`
    GateReluSquared,
}

/// `dst[i] ⊕= acc[i] · f` as `how` says. Inlined into each kernel set's `rescale`.
#[inline(always)]
pub fn rescale(how: Combine, dst: &mut [f32], acc: &[i32], f: f32) {
    let pairs = dst.iter_mut().zip(acc);
    match how {
        Combine::Store => pairs.for_each(|(y, &a)| *y = a as f32 * f),
        Combine::Add => pairs.for_each(|(y, &a)| *y += a as f32 * f),
        Combine::GateSilu => pairs.for_each(|(g, &a)| *g = silu(*g) * (a as f32 * f)),
        Combine::GateReluSquared => pairs.for_each(|(g, &a)| *g = g.max(0.0) * g.max(0.0) * (a as f32 * f)),
    }
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

/// Rotary embedding with half rotation (Hugging Face `rotate_half`): dimension `i` pairs
/// with `i + d/2`. `cos`/`sin` hold `d/2` values for this position.
pub fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * cos[i] - x1 * sin[i];
        b[i] = x1 * cos[i] + x0 * sin[i];
    }
}

/// `x · sigmoid(x)`, with the inline [`exp`] so that loops over it vectorise.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// A float matrix in the file: the embedding or the output projection.
#[derive(Debug, Clone, Copy)]
pub struct FloatMatrix {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub encoding: Encoding,
}

impl FloatMatrix {
    /// Bytes of one row's values (q8: without its scale).
    fn row_bytes(&self) -> usize {
        self.cols
            * match self.encoding {
                Encoding::F16 => 2,
                Encoding::Q8 => 1,
                _ => 4,
            }
    }

    /// Where the row values start (q8 keeps all row scales first).
    fn values_offset(&self) -> usize {
        self.offset + if self.encoding == Encoding::Q8 { self.rows * 4 } else { 0 }
    }

    fn q8_scale(&self, file: &[u8], r: usize) -> f32 {
        let b = &file[self.offset + 4 * r..self.offset + 4 * r + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Row `r` as f32 values into `out`.
    pub fn row(&self, file: &[u8], r: usize, out: &mut [f32]) {
        let (rb, base) = (self.row_bytes(), self.values_offset());
        let bytes = &file[base + r * rb..base + (r + 1) * rb];
        match self.encoding {
            Encoding::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Encoding::Q8 => {
                let s = self.q8_scale(file, r);
                for (o, &b) in out.iter_mut().zip(bytes) {
                    *o = f32::from(b as i8) * s;
                }
            }
            _ => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// `out[r] = dot(M[r], x)` for every row, in parallel bands.
    #[track_caller]
    pub fn matvec(&self, k: &Kernels, file: &[u8], x: &[f32], out: &mut [f32]) {
        const BAND: usize = 64;
        let (rb, base) = (self.row_bytes(), self.values_offset());
        let data = &file[base..base + self.rows * rb];
        crate::pool::for_each_chunk_mut(&mut out[..self.rows], BAND, &|band, out| {
            let bytes = &data[band * BAND * rb..(band * BAND + out.len()) * rb];
            for (i, (o, row)) in out.iter_mut().zip(bytes.chunks_exact(rb)).enumerate() {
                *o = match self.encoding {
                    Encoding::F16 => k.dot_f16(row, x),
                    Encoding::Q8 => k.dot_i8(row, x) * self.q8_scale(file, band * BAND + i),
                    _ => k.dot_f32(row, x),
                };
            }
        });
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
    const KB: usize = KEY_BLOCK;
    pos / KB * KB * kv_dim + KB * kv0 + pos % KB * head_dim
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
/// [`attend_heads`]): their scores, then four accumulators per head.
pub fn attend_scratch_len(heads: usize, head_dim: usize, n: usize) -> usize {
    heads * (n.next_multiple_of(KEY_BLOCK) + 4 * head_dim)
}

/// How many positions ahead of its reads a decoded token's attention asks for values: the
/// same head's values in the next block (four positions ahead measured ~20% slower).
const VALUE_AHEAD: usize = KEY_BLOCK;

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
/// contiguous stretches, which a call for every head reads front to back:
/// - `keys`: blocks of [`KEY_BLOCK`] positions, `KEY_BLOCK · kv_dim` floats each; in a
///   block, per kv head, per dimension, one row of 16 lanes (one per position), so a score
///   needs no horizontal sum. The last block runs past `end` into unused cache; those
///   scores are ignored.
/// - `values`: blocks of [`KEY_BLOCK`] positions like the keys (the last one whole),
///   `KEY_BLOCK · kv_dim` floats each; in a block, per kv head, its positions' `head_dim`
///   values one after another ([`value_at`]). So a call's run of heads reads one stretch
///   per block. (Stored per position, all kv heads side by side, the same run was a few
///   hundred bytes every `kv_dim` floats, and read at ~2/3 of the keys' rate.)
///
/// `scratch` holds [`attend_scratch_len`] floats. Every lane sums in a fixed order (a score
/// over the dimensions in order; a span's weighted value in four accumulators that take its
/// positions in turn, then `(a0 + a1) + (a2 + a3)`), so the result depends neither on how
/// heads are grouped into calls nor on the vector width: every kernel set inlines this
/// and computes the same bits, and [`attend_tokens`] the same again.
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
    const KB: usize = KEY_BLOCK;
    let HeadsAt { head_dim: hd, first_head, group, kv_dim, scale } = heads_at;
    assert!(start.is_multiple_of(SPAN) && start < end && end - start <= SPAN, "attend_heads: span {start}..{end}");
    let heads = q.len() / hd;
    let (n, pl) = (end - start, partial_len(hd));
    let parts = &mut parts[..heads * pl];
    let padded = n.next_multiple_of(KB);
    let (scores, acc) = scratch[..attend_scratch_len(heads, hd, n)].split_at_mut(heads * padded);
    let at = Rows::<K> { q, hd, heads, first_head, group, keys, kv_dim, first_block: start / KB };

    // Scores block by block, each block's heads in turn (the keys front to back), four
    // (block, head) rows at a time as independent sums.
    let rows = heads * (padded / KB);
    let mut j = 0;
    while j < rows {
        j += match rows - j {
            1 => at.scores::<1>(j, scale, scores, padded),
            2 => at.scores::<2>(j, scale, scores, padded),
            3 => at.scores::<3>(j, scale, scores, padded),
            _ => at.scores::<4>(j, scale, scores, padded),
        };
    }
    for (sc, part) in scores.chunks_exact_mut(padded).zip(parts.chunks_exact_mut(pl)) {
        let (m, l) = span_weights(&mut sc[..n]);
        part[0] = m;
        part[1] = l;
    }

    // Weighted values: accumulator `u` of a head takes the span's positions 4i + u; a tail
    // of fewer than four positions goes to accumulator 0.
    // Position by position, all heads, so the values are read front to back; the
    // accumulators stay in L1.
    acc.fill(0.0);
    let mut s = 0;
    while s < n {
        let step = if s + 4 <= n { 4 } else { 1 };
        for u in 0..step {
            let p = start + s + u;
            for h in 0..heads {
                let (a, v0) = (scores[h * padded + s + u], at.kv_at(h));
                let ahead = values.as_ptr().wrapping_add(value_at(p + VALUE_AHEAD, v0, kv_dim, hd));
                for l in (0..hd).step_by(K::PER_LINE) {
                    prefetch(ahead.wrapping_add(l));
                }
                let row = value_at(p, v0, kv_dim, hd);
                axpy::<K>(&mut acc[(4 * h + u) * hd..(4 * h + u + 1) * hd], a, &values[row..row + hd]);
            }
        }
        s += step;
    }
    for (part, a) in parts.chunks_exact_mut(pl).zip(acc.chunks_exact(4 * hd)) {
        finish(a, &mut part[2..]);
    }
}

/// `o = (a0 + a1) + (a2 + a3)` of four accumulators `a` of `o.len()` values each.
#[inline(always)]
fn finish(a: &[f32], o: &mut [f32]) {
    let hd = o.len();
    let (a01, a23) = a[..4 * hd].split_at(2 * hd);
    let (a0, a1) = a01.split_at(hd);
    let (a2, a3) = a23.split_at(hd);
    for i in 0..hd {
        o[i] = (a0[i] + a1[i]) + (a2[i] + a3[i]);
    }
}

/// Positions per block of values in [`attend_tokens`] (a divisor of [`SPAN`], a multiple of 4).
pub const VALUE_BLOCK: usize = 32;

/// Query tokens per [`attend_tokens`] call (a multiple of 8).
pub const ATTEND_TOKENS: usize = 32;

/// Floats of scratch for [`attend_tokens`] over causal lengths up to `n`: the scores of
/// [`ATTEND_TOKENS`] tokens over one span, four accumulators per token, a block of [`VALUE_BLOCK`]
/// positions' values, and every token's partial results.
pub fn attend_tokens_scratch_len(head_dim: usize, n: usize) -> usize {
    ATTEND_TOKENS * (SPAN + 4 * head_dim + n.div_ceil(SPAN) * partial_len(head_dim)) + VALUE_BLOCK * head_dim
}

/// Causal attention of one query head (`at.first_head`) for `tokens` ≤ [`ATTEND_TOKENS`]
/// consecutive positions of a prompt: token `t` (query `q[t · head_dim..]`, output
/// `out[t · head_dim..]`) attends to positions `0..n0 + t`. `q` holds [`ATTEND_TOKENS`]
/// rows (those past `tokens` are read but ignored: zeros, say).
///
/// Per span, the same arithmetic in the same order as [`attend_heads`] for each token
/// alone, and the same [`combine_spans`], so the same bits (a prompt equals its tokens
/// decoded one at a time), but each key row and each value is read once for all the
/// tokens instead of once per token: a prompt after a long context reads its cache
/// [`ATTEND_TOKENS`] times less.
///
/// `G` (a divisor of [`ATTEND_TOKENS`]) is how many tokens' scores are summed at once in
/// registers: the kernel set chooses it for its registers; it changes no result.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attend_tokens<K: KvRead, const G: usize>(
    q: &[f32],
    at: HeadsAt,
    keys: &[K::Elem],
    values: &[K::Elem],
    scratch: &mut [f32],
    n0: usize,
    tokens: usize,
    out: &mut [f32],
) {
    const KB: usize = KEY_BLOCK;
    const T: usize = ATTEND_TOKENS;
    const { assert!(G > 0 && T.is_multiple_of(G), "G must divide ATTEND_TOKENS") };
    let HeadsAt { head_dim: hd, first_head, group, kv_dim, scale } = at;
    assert!((1..=T).contains(&tokens) && n0 >= 1, "attend_tokens: {tokens} tokens from length {n0}");
    let n_max = n0 + tokens - 1;
    let (spans, pl) = (n_max.div_ceil(SPAN), partial_len(hd));
    let (scores, rest) = scratch[..attend_tokens_scratch_len(hd, n_max)].split_at_mut(T * SPAN);
    let (acc, rest) = rest.split_at_mut(T * 4 * hd);
    let (block, parts) = rest.split_at_mut(VALUE_BLOCK * hd);
    let kv0 = first_head / group * hd;
    let q: &[f32] = &q[..T * hd];
    // Token `t`'s positions in a span that ends at `end`: up to `n0 + t`.
    let length = |t: usize, end: usize| (n0 + t).min(end);

    for j in 0..spans {
        let (start, end) = (j * SPAN, ((j + 1) * SPAN).min(n_max));
        // Scores, block by block (each block's key rows come from memory once, then from
        // L1), `G` tokens at a time in registers; lane `i` of a token sums `q[d] · key`
        // over `d` in order, as `attend_heads`.
        for b in 0..(end - start).div_ceil(KB) {
            let first = (start / KB + b) * KB * kv_dim + kv0 * KB;
            let rows = &keys[first..first + hd * KB];
            // This head's rows of the next block: a few kilobytes further on than the
            // prefetchers look.
            let next = keys.as_ptr().wrapping_add(first + KB * kv_dim);
            for l in (0..hd * KB).step_by(K::PER_LINE) {
                prefetch(next.wrapping_add(l));
            }
            for t0 in (0..tokens).step_by(G) {
                let qs: [&[f32]; G] = std::array::from_fn(|t| &q[(t0 + t) * hd..(t0 + t + 1) * hd]);
                let mut sum = [[0f32; KB]; G];
                for d in 0..hd {
                    let k = K::lanes(&rows[d * KB..(d + 1) * KB]);
                    for (sum, q) in sum.iter_mut().zip(qs) {
                        let qd = q[d];
                        for i in 0..KB {
                            sum[i] += qd * k[i];
                        }
                    }
                }
                for (t, sum) in sum.iter().enumerate().take(tokens - t0) {
                    let at = (t0 + t) * SPAN + b * KB;
                    for (sc, a) in scores[at..at + KB].iter_mut().zip(sum) {
                        *sc = a * scale;
                    }
                }
            }
        }
        for t in 0..tokens {
            let n = length(t, end);
            if start < n {
                let (m, l) = span_weights(&mut scores[t * SPAN..t * SPAN + n - start]);
                parts[(t * spans + j) * pl] = m;
                parts[(t * spans + j) * pl + 1] = l;
            }
        }

        // Weighted values: as in `attend_heads`, accumulator `u` of a token whose span
        // holds `start..n` takes positions `start + 4i + u` below `4 · (n / 4)`,
        // accumulator 0 the rest, each in position order.
        let acc = &mut acc[..tokens * 4 * hd];
        acc.fill(0.0);
        const VB: usize = 32;
        if hd % VB == 0 {
            // Blocks of `VALUE_BLOCK` positions: their values widened once into `block` (per
            // 32 dimensions, the block's rows in turn), then per pair of tokens 8
            // dimensions at a time, or per token 32, with the four accumulators in
            // registers.
            const PB: usize = VALUE_BLOCK;
            let block = &mut block[..PB * hd];
            for s0 in (start..end).step_by(PB) {
                let m = (s0 + PB).min(end) - s0;
                for j in 0..m {
                    let row = value_at(s0 + j, kv0, kv_dim, hd);
                    let row = &values[row..row + hd];
                    for (c, v) in row.chunks_exact(VB).enumerate() {
                        let dst = &mut block[(c * PB + j) * VB..(c * PB + j + 1) * VB];
                        dst[..KB].copy_from_slice(&K::lanes(&v[..KB]));
                        dst[KB..].copy_from_slice(&K::lanes(&v[KB..]));
                    }
                }
                // The next block's values.
                for s in s0 + PB..(s0 + 2 * PB).min(n_max) {
                    let at = values.as_ptr().wrapping_add(value_at(s, kv0, kv_dim, hd));
                    for l in (0..hd).step_by(K::PER_LINE) {
                        prefetch(at.wrapping_add(l));
                    }
                }
                // Tokens whose groups of four cover the whole block (a suffix of them: a
                // token's length grows with `t`) go two at a time; the others, and an odd
                // one left over, one at a time.
                let full = |t: usize| length(t, end) / 4 * 4 >= s0 + PB;
                let first_full = (0..tokens).find(|&t| full(t)).unwrap_or(tokens);
                let pairs_end = first_full + (tokens - first_full) / 2 * 2;
                for t in (first_full..pairs_end).step_by(2) {
                    let p0 = &scores[t * SPAN + s0 - start..t * SPAN + s0 - start + PB];
                    let p1 = &scores[(t + 1) * SPAN + s0 - start..(t + 1) * SPAN + s0 - start + PB];
                    let (acc0, acc1) = acc[4 * t * hd..4 * (t + 2) * hd].split_at_mut(4 * hd);
                    // `W` dimensions of both tokens' four accumulators in registers (eight
                    // 8-lane vectors, which leaves AVX2's other eight for the values and
                    // the two tokens' weights).
                    const W: usize = 8;
                    for d0 in (0..hd).step_by(W) {
                        let (c, w) = (d0 / VB, d0 % VB);
                        let vc = &block[c * PB * VB..(c + 1) * PB * VB];
                        let mut r0: [[f32; W]; 4] = [[0.0; W]; 4];
                        let mut r1: [[f32; W]; 4] = [[0.0; W]; 4];
                        for u in 0..4 {
                            r0[u].copy_from_slice(&acc0[u * hd + d0..u * hd + d0 + W]);
                            r1[u].copy_from_slice(&acc1[u * hd + d0..u * hd + d0 + W]);
                        }
                        for ((a0, a1), v4) in p0.chunks_exact(4).zip(p1.chunks_exact(4)).zip(vc.chunks_exact(4 * VB)) {
                            for u in 0..4 {
                                let v = &v4[u * VB + w..u * VB + w + W];
                                for i in 0..W {
                                    r0[u][i] += a0[u] * v[i];
                                    r1[u][i] += a1[u] * v[i];
                                }
                            }
                        }
                        for u in 0..4 {
                            acc0[u * hd + d0..u * hd + d0 + W].copy_from_slice(&r0[u]);
                            acc1[u * hd + d0..u * hd + d0 + W].copy_from_slice(&r1[u]);
                        }
                    }
                }
                for t in (0..first_full).chain(pairs_end..tokens) {
                    let n = length(t, end);
                    if s0 >= n {
                        continue;
                    }
                    // Positions s0 + i: i < main in groups of four, then main..stop one at a time.
                    let stop = (s0 + PB).min(n) - s0;
                    let main = (n / 4 * 4).clamp(s0, s0 + stop) - s0;
                    let p = &scores[t * SPAN + s0 - start..t * SPAN + s0 - start + PB];
                    let acc = &mut acc[4 * t * hd..4 * (t + 1) * hd];
                    for (c, vc) in block.chunks_exact(PB * VB).enumerate() {
                        let mut r = [[0f32; VB]; 4];
                        for (u, r) in r.iter_mut().enumerate() {
                            r.copy_from_slice(&acc[u * hd + c * VB..u * hd + (c + 1) * VB]);
                        }
                        for (a4, v4) in p[..main].chunks_exact(4).zip(vc.chunks_exact(4 * VB)) {
                            for (u, r) in r.iter_mut().enumerate() {
                                let (a, v) = (a4[u], &v4[u * VB..(u + 1) * VB]);
                                for i in 0..VB {
                                    r[i] += a * v[i];
                                }
                            }
                        }
                        for (&a, v) in p[main..stop].iter().zip(vc[main * VB..].chunks_exact(VB)) {
                            for i in 0..VB {
                                r[0][i] += a * v[i];
                            }
                        }
                        for (u, r) in r.iter().enumerate() {
                            acc[u * hd + c * VB..u * hd + (c + 1) * VB].copy_from_slice(r);
                        }
                    }
                }
            }
        } else {
            for s in start..end {
                let row = value_at(s, kv0, kv_dim, hd);
                let row = &values[row..row + hd];
                for t in 0..tokens {
                    let n = length(t, end);
                    if s < n {
                        let u = if s < n / 4 * 4 { s % 4 } else { 0 };
                        let a = scores[t * SPAN + s - start];
                        axpy::<K>(&mut acc[(4 * t + u) * hd..(4 * t + u + 1) * hd], a, row);
                    }
                }
            }
        }
        for t in 0..tokens {
            if start < length(t, end) {
                let at = (t * spans + j) * pl + 2;
                finish(&acc[4 * t * hd..4 * (t + 1) * hd], &mut parts[at..at + hd]);
            }
        }
    }
    for t in 0..tokens {
        let spans_t = (n0 + t).div_ceil(SPAN);
        combine_spans(&parts[t * spans * pl..], pl, spans_t, &mut out[t * hd..(t + 1) * hd]);
    }
}

/// `acc += a · v`, 16 lanes at a time (so a width like 96 takes whole vectors).
#[inline(always)]
fn axpy<K: KvRead>(acc: &mut [f32], a: f32, v: &[K::Elem]) {
    let mut acc16 = acc.chunks_exact_mut(KEY_BLOCK);
    let mut v16 = v.chunks_exact(KEY_BLOCK);
    for (x, v) in (&mut acc16).zip(&mut v16) {
        let v = K::lanes(v);
        for i in 0..KEY_BLOCK {
            x[i] += a * v[i];
        }
    }
    for (x, &v) in acc16.into_remainder().iter_mut().zip(v16.remainder()) {
        *x += a * v.to_f32();
    }
}

/// The key rows and queries of [`attend_heads`]: row `j` is block `j / heads`, head `j % heads`.
struct Rows<'a, K: KvRead> {
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

impl<K: KvRead> Rows<'_, K> {
    /// Where the kv head of query head `first_head + h` starts in a key block's or a
    /// position's values.
    #[inline(always)]
    fn kv_at(&self, h: usize) -> usize {
        (self.first_head + h) / self.group * self.hd
    }

    /// Scores of rows `j..j + G` into `scores` (`padded` per head); returns `G`. Lane `i`
    /// of a row sums `q[d] · key` over `d` in order.
    #[inline(always)]
    fn scores<const G: usize>(&self, j: usize, scale: f32, scores: &mut [f32], padded: usize) -> usize {
        const KB: usize = KEY_BLOCK;
        let (hd, heads) = (self.hd, self.heads);
        let block_head = |u: usize| ((j + u) / heads, (j + u) % heads);
        let rows: [&[K::Elem]; G] = std::array::from_fn(|u| {
            let (b, h) = block_head(u);
            let start = (self.first_block + b) * KB * self.kv_dim + self.kv_at(h) * KB;
            &self.keys[start..start + hd * KB]
        });
        let qs: [&[f32]; G] = std::array::from_fn(|u| &self.q[block_head(u).1 * hd..(block_head(u).1 + 1) * hd]);
        // The same heads' rows in the next block, which this call's task reads after the
        // rest of its heads in this block: the hardware prefetchers alone leave these reads
        // waiting, and a task's heads are only part of each block.
        let ahead: [*const K::Elem; G] = std::array::from_fn(|u| {
            let (b, h) = block_head(u);
            self.keys.as_ptr().wrapping_add((self.first_block + b + 1) * KB * self.kv_dim + self.kv_at(h) * KB)
        });
        // Prefetch a line per dimension of f32 keys; of f16 keys, every other dimension.
        let line = K::PER_LINE / KB;
        let mut acc = [[0f32; KB]; G];
        for d in 0..hd {
            if heads > 1 && d % line.max(1) == 0 {
                for p in ahead {
                    prefetch(p.wrapping_add(d * KB));
                }
            }
            for u in 0..G {
                let (qd, k) = (qs[u][d], K::lanes(&rows[u][d * KB..(d + 1) * KB]));
                for i in 0..KB {
                    acc[u][i] += qd * k[i];
                }
            }
        }
        for (u, acc) in acc.iter().enumerate() {
            let (b, h) = block_head(u);
            for (sc, a) in scores[h * padded + b * KB..h * padded + (b + 1) * KB].iter_mut().zip(acc) {
                *sc = a * scale;
            }
        }
        G
    }
}

/// `e^x` without a libm call, so that loops over it vectorise: Cephes' `expf` (range
/// reduction by ln 2 in two parts, degree-5 polynomial, exponent by bit assembly).
/// Within 2 ulp of the exact value for normal results; 0 below -87.3 (where the result
/// would be subnormal); inputs above 88.37 give e^88.37 (about 2.4e38) rather than
/// infinity; a NaN input gives NaN, never a panic.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_54, 88.376_26);
    // n = round_half_even(xc · log2 e), as `round_half_even_small` computes it; the
    // integer n also sits in the low mantissa bits of `t` (its bits are 0x4B40_0000 + n),
    // which builds 2^n below without a float-to-int conversion (Rust's saturating `as i32`
    // does not vectorise: it became one scalar conversion per lane).
    let t = xc * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    let r = xc - n * C1 - n * C2;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n for n in -126..=127: a normal float built from its exponent bits n + 127.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.336_54 {
        0.0
    } else {
        e * two_n
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
    fn check_tokens_together<K: KvRead, const G: usize>(narrow: impl Fn(f32) -> K::Elem) {
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
                attend_tokens::<K, G>(q, at, &keys, &values, &mut scratch, n0, tokens, &mut together);
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
        // Every kernel set's number of tokens in registers (see `float_ops!`).
        check_tokens_together::<F32Kv, 4>(|x| x);
        check_tokens_together::<F16Kv, 4>(|x| half::f16::from_f32(x).to_bits());
        check_tokens_together::<F32Kv, 8>(|x| x);
        check_tokens_together::<F16Kv, 8>(|x| half::f16::from_f32(x).to_bits());
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

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut v = -140.0f32;
        while v <= 140.0 {
            for x in [v, v + 0.5, v - 0.5, v + 0.49999997, v + 0.50000006] {
                assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            }
            v += 0.125;
        }
        let mut seed = 1u32;
        for _ in 0..1_000_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = (seed as f32 / u32::MAX as f32 - 0.5) * 300.0;
            assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
        }
        assert!(round_half_even_small(f32::NAN).is_nan());
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut x = -87.3f32;
        let mut worst = 0.0f64;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        // The clamp's ends: 2^127 · e^r at the top, finite; the smallest normal result.
        assert_eq!(exp(f32::INFINITY), exp(88.376_26));
        assert!(exp(f32::INFINITY).is_finite() && exp(f32::INFINITY) > 2.4e38);
        assert!(exp(-87.336_54) >= f32::MIN_POSITIVE);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn quantized_bytes_equal_rounded_clamped_values() {
        // Every rounding case around every int8 value, and far outside the range.
        let mut x: Vec<f32> = (-130..=130)
            .flat_map(|i| {
                let i = i as f32;
                [i, i + 0.5, i - 0.5, i + 0.49999997, i + 0.50000006, i + 0.25]
            })
            .collect();
        x.extend([1e9, -1e9, 0.0, -0.0]);
        let ones = vec![1.0; x.len()];
        let mut q = vec![0i8; x.len()];
        let (s_x, sum) = quantize_normed(&x, &ones, None, &mut q);
        let want: Vec<i8> = x.iter().map(|v| (v * s_x).round_ties_even().clamp(-128.0, 127.0) as i8).collect();
        assert_eq!(q, want);
        assert_eq!(sum, want.iter().map(|&v| i32::from(v)).sum::<i32>());
        // A NaN is ignored by the maximum and gives some byte, without a panic.
        let (s_x, _) = quantize_normed(&[f32::NAN, 1.0], &[1.0, 1.0], None, &mut q[..2]);
        assert_eq!((s_x, q[1]), (127.0, 127));
    }

    #[test]
    fn quantization_matches_the_definition() {
        let x = [0.5f32, -1.0, 0.25, 0.0, -0.003, 0.9999];
        let mut q = [7i8; 256];
        let (s, sum) = quantize_activations(&x, &mut q);
        assert_eq!(s, 127.0);
        // 63.5 -> 64 (even), -127, 31.75 -> 32, 0, -0.381 -> -0, 126.987 -> 127
        assert_eq!(&q[..6], &[64, -127, 32, 0, 0, 127]);
        assert!(q[6..].iter().all(|&v| v == 0));
        assert_eq!(sum, 64 - 127 + 32 + 127);
    }
}
