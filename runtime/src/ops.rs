//! The small numeric operations of the forward pass, each on one token's vector.

use crate::kernels::Kernels;
use tern_format::Encoding;

/// `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// Round half to even for |v| < 2^22, without a libm call: adding 1.5·2^23 moves `v`
/// where the float spacing is exactly 1, so the addition itself rounds to nearest with
/// ties to even (1.5·2^23 is even), and subtracting it back is exact.
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    const M: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + M) - M
}

/// Per-token absmax int8 quantization, exactly as BitLinear defines it:
/// `s_x = 127 / max(max|x|, 1e-5)`, `xq = clamp(round_half_even(x * s_x), -128, 127)`.
/// Writes `x.len()` values to `xq` and zeros to the rest (the block padding).
/// Returns `(s_x, sum(xq))`.
pub fn quantize_activations(x: &[f32], xq: &mut [i8]) -> (f32, i32) {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s_x = 127.0 / max.max(1e-5);
    let mut sum = 0i32;
    for (q, &v) in xq.iter_mut().zip(x) {
        // |v · s_x| ≤ 127 (+ rounding), well inside round_half_even_small's range.
        let r = round_half_even_small(v * s_x).clamp(-128.0, 127.0) as i8;
        *q = r;
        sum += i32::from(r);
    }
    xq[x.len()..].fill(0);
    (s_x, sum)
}

/// In-place softmax.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
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

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
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

/// Float dot product with 8 independent accumulators (vectorises, fixed order).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Attention of one query head `q` over positions `0..scores.len()`:
/// `out = softmax(scale · q·k) · v`. `keys` and `values` hold one row of `stride` floats
/// per position, with this head's `q.len()` values at the start of each row.
///
/// Inlined into each kernel set's `attend` (compiled there with its SIMD features): the
/// operations and their order are fixed, so every kernel set gets the same bits.
#[inline(always)]
pub fn attend_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (s, score) in scores.iter_mut().enumerate() {
        *score = dot(q, &keys[s * stride..s * stride + hd]) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (s, &a) in scores.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[s * stride..s * stride + hd]) {
            *o += a * v;
        }
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
