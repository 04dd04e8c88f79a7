//! Per-token operations outside the kernels: RMSNorm (of the final hidden state, before
//! the output projection), RoPE, and BitLinear's activation quantization as a plain
//! function (the reference tests call it).

use crate::kernels::float::{quantize_normed, rms_inv};

/// `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let inv = rms_inv(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// Per-token absmax int8 quantization, exactly as BitLinear defines it:
/// `s_x = 127 / max(max|x|, 1e-5)`, `xq = clamp(round_half_even(x * s_x), -128, 127)`.
/// Writes `x.len()` values to `xq` and zeros to the rest (the block padding).
/// Returns `(s_x, sum(xq))`.
pub fn quantize_activations(x: &[f32], xq: &mut [i8]) -> (f32, i32) {
    quantize_normed(x, &vec![1.0; x.len()], None, xq)
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

#[cfg(test)]
mod tests {
    use super::*;

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
