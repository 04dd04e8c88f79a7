//! aarch64 kernels: ternary GEMM on NEON, with `sdot` where the CPU has the dot-product
//! extension (Armv8.2 and later: Cortex-A55/A76 on, Neoverse, Apple M).
//!
//! A 64-byte block is taken as four 16-byte quarters; quarter `q`, shifted right by `2i`
//! and masked with 3, holds the codes `w+1` of columns `64i + 16q .. 64i + 16q + 16` of
//! the block. Codes (0..=2) are valid signed bytes, so both variants multiply signed by
//! signed, and `sum(x)` is subtracted once, as in the x86 kernels:
//! - `neon-dotprod`: `sdot` multiplies 16 codes by 16 activations and adds groups of four
//!   into 4 int32 lanes;
//! - `neon`: `smull`/`smlal2` multiply into int16 lanes (8 products of at most 2·128 per
//!   lane and quarter: ≤ 2048, no overflow), then `sadalp` widens pairs into int32.
//!
//! The float operations are the portable ones: NEON is part of the aarch64 baseline, so
//! the compiler already vectorises them with it.
//!
//! Tested against the portable kernel by `tests/kernels.rs` (under qemu in CI).

use core::arch::aarch64::*;
use tern_format::ternary::BLOCK;

/// Whether this CPU has the dot-product extension (`sdot`).
pub fn dotprod_available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Same contract as [`super::portable::ternary_gemm`], on baseline NEON: tokens in groups
/// of four over every row ([`super::gemm_by_rows`]).
pub fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    // SAFETY: NEON is part of the aarch64 baseline; `gemm_by_rows` checks the slice bounds.
    unsafe { super::gemm_by_rows::<Neon<false>>(rows, row_bytes, xq, act_sums, out) }
}

/// Same contract as [`super::portable::ternary_gemm`], with `sdot`.
///
/// # Safety
/// The CPU must have the dot-product extension ([`dotprod_available`]).
#[target_feature(enable = "dotprod")]
pub unsafe fn ternary_gemm_dotprod(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    super::gemm_by_rows::<Neon<true>>(rows, row_bytes, xq, act_sums, out)
}

/// The row kernel; `DOT` selects `sdot` over widening multiplies.
struct Neon<const DOT: bool>;

/// `acc + sdot(a, b)`: four groups of four byte products added into four int32 lanes.
///
/// # Safety
/// The CPU must have the dot-product extension. (The intrinsic `vdotq_s32` is not stable
/// in Rust yet, hence the one instruction of inline assembly; it touches registers only.)
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    core::arch::asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

impl<const DOT: bool> super::RowTokens for Neon<DOT> {
    /// Two accumulators per token (even and odd column groups) keep `sdot` chains short.
    #[inline(always)]
    unsafe fn row_tokens<const T: usize>(row: *const u8, x: *const i8, padded: usize, blocks: usize) -> [i32; T] {
        let m = vdupq_n_u8(3);
        let mut acc = [[vdupq_n_s32(0); 2]; T];
        for b in 0..blocks {
            for q in 0..4 {
                let w = vld1q_u8(row.add(b * 64 + q * 16));
                let codes = [
                    vreinterpretq_s8_u8(vandq_u8(w, m)),
                    vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(w), m)),
                    vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(w), m)),
                    vreinterpretq_s8_u8(vshrq_n_u8::<6>(w)),
                ];
                for (j, acc) in acc.iter_mut().enumerate() {
                    let xj = x.add(j * padded + b * BLOCK + q * 16);
                    if DOT {
                        for (i, c) in codes.iter().enumerate() {
                            acc[i & 1] = sdot(acc[i & 1], *c, vld1q_s8(xj.add(i * 64)));
                        }
                    } else {
                        let mut s16 = vdupq_n_s16(0);
                        for (i, c) in codes.iter().enumerate() {
                            let xv = vld1q_s8(xj.add(i * 64));
                            s16 = vmlal_s8(s16, vget_low_s8(*c), vget_low_s8(xv));
                            s16 = vmlal_high_s8(s16, *c, xv);
                        }
                        acc[q & 1] = vpadalq_s16(acc[q & 1], s16);
                    }
                }
            }
        }
        let mut out = [0i32; T];
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = vaddvq_s32(vaddq_s32(a[0], a[1]));
        }
        out
    }
}
