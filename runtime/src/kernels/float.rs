//! The float loops every kernel set compiles with its own target features: BitLinear's
//! activation quantization (fused with the RMSNorm before it), the rescale of integer
//! products (fused with what consumes them), and the `exp` they and attention use.
//!
//! Each is a plain loop in a fixed order, `#[inline(always)]`, so that a kernel set's
//! wrapper (`float_ops!` in `kernels/mod.rs`) vectorises it at its own width; the order of
//! operations does not depend on the width, so every kernel set computes the same bits.

/// Round half to even for |v| < 2^22, without a libm call: adding 1.5·2^23 moves `v`
/// where the float spacing is exactly 1, so the addition itself rounds to nearest with
/// ties to even (1.5·2^23 is even), and subtracting it back is exact.
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    (v + ROUNDER) - ROUNDER
}

/// 1.5 · 2^23: adding it rounds any |v| < 2^22 to an integer, half to even.
const ROUNDER: f32 = 12_582_912.0;

/// Lanes of the fixed-order float reductions below: the same grouping at every SIMD
/// width, so every kernel set computes the same bits.
pub const LANES: usize = 16;

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

/// `a · b + c` rounded once (a fused multiply-add), as attention's sums take their terms:
/// correctly rounded on every target (one instruction where the kernel set has FMA, libm's
/// `fmaf` otherwise), so every kernel set computes the same bits.
#[inline(always)]
pub fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `x · sigmoid(x)`, with the inline [`exp`] so that loops over it vectorise.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
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
}
