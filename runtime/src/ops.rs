//! The small numeric operations of the forward pass, each on one token's vector.

use crate::kernels::Kernels;
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

/// In-place softmax (with [`exp`] and [`LANES`] running maxima and sums, so that it
/// vectorises).
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
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
    let inv = 1.0 / sums.iter().sum::<f32>();
    for v in x.iter_mut() {
        *v *= inv;
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

/// Positions per block of the key cache and of attention scores.
pub const SCORE_BLOCK: usize = 64;

/// Attention of one query head `q` over positions `0..n`: `out = softmax(scale · q·k) · v`.
///
/// `keys` is this head's key cache in blocks of [`SCORE_BLOCK`] positions, each block
/// dimension-major: dimension `d` of position `64b + i` at `keys[(b · hd + d) · 64 + i]`.
/// So the scores of a block come from one contiguous stretch of memory, with 64 positions
/// per load row and no horizontal sums (a block runs past `n` into unused cache; those
/// scores are ignored). `scores` has room for `n` rounded up to a block. `values` holds
/// this head's values position-major, `value_stride` floats per position (`q.len()` used).
///
/// Inlined into each kernel set's `attend` (compiled there with its SIMD features): every
/// lane sums in the same fixed order, so every kernel set gets the same bits, and several
/// independent accumulators keep the adds from waiting on each other.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    value_stride: usize,
    scale: f32,
    scores: &mut [f32],
    n: usize,
    out: &mut [f32],
) {
    const SB: usize = SCORE_BLOCK;
    let hd = q.len();
    for s0 in (0..n).step_by(SB) {
        let block = &keys[s0 * hd..(s0 + SB) * hd];
        let sc = &mut scores[s0..s0 + SB];
        // The last block may be partly empty: its scores (and key bytes) are read only
        // up to the next 16 positions past the live ones.
        match (n - s0).div_ceil(16) {
            1 => score_block::<16>(block, q, scale, sc),
            2 => score_block::<32>(block, q, scale, sc),
            3 => score_block::<48>(block, q, scale, sc),
            _ => score_block::<SB>(block, q, scale, sc),
        }
    }
    let scores = &mut scores[..n];
    softmax(scores);
    // Weighted values: 32 dimensions at a time, four positions interleaved.
    const VB: usize = 32;
    let mut d0 = 0;
    while d0 + VB <= hd {
        let mut acc = [[0f32; VB]; 4];
        let mut s = 0;
        while s + 4 <= n {
            for (u, acc) in acc.iter_mut().enumerate() {
                let (a, at) = (scores[s + u], (s + u) * value_stride + d0);
                let v = &values[at..at + VB];
                for i in 0..VB {
                    acc[i] += a * v[i];
                }
            }
            s += 4;
        }
        for (s, &a) in scores.iter().enumerate().skip(s) {
            let v = &values[s * value_stride + d0..s * value_stride + d0 + VB];
            for i in 0..VB {
                acc[0][i] += a * v[i];
            }
        }
        for i in 0..VB {
            out[d0 + i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
        }
        d0 += VB;
    }
    for (d, o) in out.iter_mut().enumerate().take(hd).skip(d0) {
        *o = scores.iter().enumerate().map(|(s, &a)| a * values[s * value_stride + d]).sum();
    }
}

/// Scores of the first `L` positions of one key block of [`SCORE_BLOCK`] positions,
/// dimension-major (`block[d * SCORE_BLOCK + i]` is dimension `d` of position `i`): lane
/// `i` sums `q[d] · key` over `d` in order, whatever `L` is.
#[inline(always)]
fn score_block<const L: usize>(block: &[f32], q: &[f32], scale: f32, scores: &mut [f32]) {
    const { assert!(L <= SCORE_BLOCK) };
    let mut acc = [0f32; L];
    for (k, &qd) in block.chunks_exact(SCORE_BLOCK).zip(q) {
        for i in 0..L {
            acc[i] += qd * k[i];
        }
    }
    for (sc, a) in scores[..L].iter_mut().zip(acc) {
        *sc = a * scale;
    }
}

/// `e^x` without a libm call, so that loops over it vectorise: Cephes' `expf` (range
/// reduction by ln 2 in two parts, degree-5 polynomial, exponent by bit assembly).
/// Within 2 ulp of the exact value for normal results; 0 below -87.3 (where the result
/// would be subnormal); inputs above 88.37 give e^88.37 (about 2.4e38) rather than
/// infinity; a NaN input gives a finite value, never a panic.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_54, 88.376_26);
    let n = round_half_even_small(xc * LOG2E);
    let r = xc - n * C1 - n * C2;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n for n in -126..=127: a normal float built from its exponent bits.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_54 {
        0.0
    } else {
        e * two_n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
