//! Portable kernels: the definition every SIMD kernel is tested against.

use tern_format::block_quant::{block_bytes, unpack_block, BLOCK as QBLOCK};
use tern_format::ternary::{BLOCK, BLOCK_BYTES};
use tern_format::Encoding;

/// `sum((w + 1) * x)` over one packed row: the unsigned-code dot product.
/// The caller subtracts `sum(x)` once to get `sum(w * x)` (the `w+1` trick).
/// Exact in i32 for any row shorter than 2^23 columns.
#[inline]
pub fn code_dot(row: &[u8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (blk, xb) in row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(BLOCK)) {
        let mut a = 0i32;
        for j in 0..BLOCK_BYTES {
            let b = blk[j];
            a += i32::from(b & 3) * i32::from(xb[j])
                + i32::from((b >> 2) & 3) * i32::from(xb[64 + j])
                + i32::from((b >> 4) & 3) * i32::from(xb[128 + j])
                + i32::from(b >> 6) * i32::from(xb[192 + j]);
        }
        acc += a;
    }
    acc
}

/// Ternary GEMM over a band of rows, token-major: `out[t * n_rows + r] = sum_k W[r, k] * xq[t, k]`.
/// `rows` holds `n_rows` whole packed rows of `row_bytes` each; `xq` holds `n_tok` padded
/// activation rows; `act_sums[t] = sum(xq[t])`.
pub fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    let n_tok = act_sums.len();
    let padded = row_bytes * 4;
    let n_rows = rows.len() / row_bytes;
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        for t in 0..n_tok {
            out[t * n_rows + r] = code_dot(row, &xq[t * padded..(t + 1) * padded]) - act_sums[t];
        }
    }
}

/// The wrapping sum of `bytes` read as little-endian u64 words (a trailing part shorter
/// than a word adds its bytes one by one): a streaming read that the compiler cannot
/// skip, for measuring memory bandwidth. Every kernel set computes the same value.
pub fn read_sum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder().iter().fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
    let mut acc = [0u64; 8];
    for (i, w) in words.enumerate() {
        acc[i % 8] = acc[i % 8].wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

/// `sum(w(i) * x[i])` with 8 independent accumulators in a fixed order, for each of the
/// `N` inputs `xs` (all as long as the first): `w(i)` is computed once for all of them,
/// and each input's sums are the single-input order's, so its bits do not depend on `N`.
#[inline(always)]
fn dot_by<const N: usize>(xs: [&[f32]; N], w: impl Fn(usize) -> f32) -> [f32; N] {
    let len = xs.first().map_or(0, |x| x.len());
    assert!(xs.iter().all(|x| x.len() == len), "inputs of one length");
    let mut acc = [[0f32; 8]; N];
    let full = len / 8 * 8;
    for i in 0..full {
        let wi = w(i);
        for (acc, x) in acc.iter_mut().zip(&xs) {
            acc[i % 8] += wi * x[i];
        }
    }
    let mut out = [0f32; N];
    for ((o, acc), x) in out.iter_mut().zip(&acc).zip(&xs) {
        let tail: f32 = (full..len).map(|i| w(i) * x[i]).sum();
        *o = acc.iter().sum::<f32>() + tail;
    }
    out
}

/// Dot product of a little-endian f16 row with `x`.
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    f16_n([row], [x])[0][0]
}

/// Dot product of a little-endian f32 row with `x`.
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    f32_n([row], [x])[0][0]
}

/// Dot product of an int8 row (as bytes) with `x`.
pub fn dot_i8(row: &[u8], x: &[f32]) -> f32 {
    i8_n([row], [x])[0][0]
}

/// Dot product of a q6 row (whole blocks, SPEC.md §6) with `x`, which holds one value per
/// stored value (a row's padding included: `x.len()` = 32 × blocks). The definition every
/// kernel set computes bit for bit: see [`dot_blocks`].
pub fn dot_q6(row: &[u8], x: &[f32]) -> f32 {
    q6_n([row], [x])[0][0]
}

/// [`dot_q6`] for a q4 row.
pub fn dot_q4(row: &[u8], x: &[f32]) -> f32 {
    q4_n([row], [x])[0][0]
}

/// [`dot_f16`] of `R` rows (one after the other) × `N` inputs, each the bits of its own [`dot_f16`].
#[inline(always)]
fn f16_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    rows.map(|row| {
        let len = xs.first().map_or(0, |x| x.len());
        let row = &row[..2 * len];
        dot_by(xs, |i| half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32())
    })
}

/// [`dot_f32`] of `R` rows (one after the other) × `N` inputs, each the bits of its own [`dot_f32`].
#[inline(always)]
fn f32_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    rows.map(|row| {
        let len = xs.first().map_or(0, |x| x.len());
        let row = &row[..4 * len];
        dot_by(xs, |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]))
    })
}

/// [`dot_i8`] of `R` rows (one after the other) × `N` inputs, each the bits of its own [`dot_i8`].
#[inline(always)]
fn i8_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    rows.map(|row| {
        let len = xs.first().map_or(0, |x| x.len());
        let row = &row[..len];
        dot_by(xs, |i| f32::from(row[i] as i8))
    })
}

/// [`dot_q6`] of `R` rows (one after the other) × `N` inputs, each the bits of its own [`dot_q6`].
#[inline(always)]
fn q6_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    rows.map(|row| dot_blocks(xs, row, Encoding::Q6))
}

/// [`dot_q4`] of `R` rows (one after the other) × `N` inputs, each the bits of its own [`dot_q4`].
#[inline(always)]
fn q4_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    rows.map(|row| dot_blocks(xs, row, Encoding::Q4))
}

many_dots!(dots_f16 = f16_n / 1 x 4, dots_f32 = f32_n / 1 x 4, dots_i8 = i8_n / 1 x 4, dots_q6 = q6_n / 1 x 4, dots_q4 = q4_n / 1 x 4);

/// `sum(d_b · q[i] · x[i])` over the blocks of a q6/q4 row, in this order, which the SIMD
/// kernels keep (so every kernel set gives the same bits): 16 lanes; for block `b`, lane
/// `l` forms `p = fma(q[l+16], x[l+16], q[l]·x[l])`, then `acc[l] = fma(d_b, p, acc[l])`
/// (fused multiply-adds, rounded once: `f32::mul_add`, which is exact IEEE `fma` on every
/// target). At the end [`sum16`] adds the lanes. Each of the `N` inputs `xs` gets this
/// order on its own; a block is unpacked once for all of them.
#[inline(always)]
fn dot_blocks<const N: usize>(xs: [&[f32]; N], row: &[u8], encoding: Encoding) -> [f32; N] {
    let bb = block_bytes(encoding);
    let blocks = row.len() / bb;
    assert!(row.len().is_multiple_of(bb) && xs.iter().all(|x| x.len() == blocks * QBLOCK), "whole blocks");
    let mut acc = [[0f32; 16]; N];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let (d, q) = unpack_block(encoding, blk);
        let d = d.to_f32();
        for (acc, x) in acc.iter_mut().zip(&xs) {
            let xb = &x[b * QBLOCK..(b + 1) * QBLOCK];
            for l in 0..16 {
                let p = f32::from(q[l + 16]).mul_add(xb[l + 16], f32::from(q[l]) * xb[l]);
                acc[l] = d.mul_add(p, acc[l]);
            }
        }
    }
    acc.map(sum16)
}

/// The sum of 16 lanes in a fixed tree: lanes `l` and `l + 8`, then `l + 4`, `l + 2`, `l + 1`.
#[inline(always)]
pub fn sum16(a: [f32; 16]) -> f32 {
    let mut w = a;
    for half in [8, 4, 2, 1] {
        for l in 0..half {
            w[l] += w[l + half];
        }
    }
    w[0]
}

float_ops!(score_tile = (4, 1), value_tile = (4, 16));
