//! AVX-512 kernels: VNNI ternary GEMM and F16C/FMA float dot products.
//!
//! Ternary: one 64-byte block of a packed row, shifted right by 0/2/4/6 and masked with
//! 3, gives the codes `w+1` of 64 consecutive columns; `vpdpbusd` multiplies them
//! (unsigned) by 64 int8 activations (signed) and adds groups of four into 16 int32
//! lanes. `sum((w+1)·x) - sum(x)` is the exact `sum(w·x)`: every product is at most
//! 2·128, so an int32 lane cannot overflow for rows under 2^22 columns.
//!
//! Every function here is `unsafe` because it requires the CPU features in its
//! `target_feature`; `Kernels` only hands them out after detecting those features.

use core::arch::x86_64::*;
use tern_format::ternary::BLOCK;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Codes of the four 64-column groups of one 64-byte block.
#[inline(always)]
unsafe fn decode(block: *const u8) -> [__m512i; 4] {
    let w = _mm512_loadu_si512(block as *const _);
    let m = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(w, m),
        _mm512_and_si512(_mm512_srli_epi16::<2>(w), m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(w), m),
        _mm512_and_si512(_mm512_srli_epi16::<6>(w), m),
    ]
}

#[inline(always)]
unsafe fn load_x(x: *const i8) -> __m512i {
    _mm512_loadu_si512(x as *const _)
}

/// Same contract as [`super::portable::ternary_gemm`].
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    let n_tok = act_sums.len();
    let padded = row_bytes * 4;
    let n_rows = rows.len() / row_bytes;
    let blocks = row_bytes / 64;
    // Every pointer below stays inside these slices: rows are `row_bytes` long (a multiple
    // of 64), each token's activations `padded` = 4 × row_bytes long.
    assert!(row_bytes.is_multiple_of(64) && rows.len() == n_rows * row_bytes);
    assert!(xq.len() >= n_tok * padded && out.len() >= n_rows * n_tok);
    let xp = xq.as_ptr();
    let mut r = 0;
    // Two rows × four tokens: each activation vector loaded feeds two rows, each decoded
    // block feeds four tokens (8 codes + 8 accumulators stay in registers).
    while r + 2 <= n_rows && n_tok >= 4 {
        let (row0, row1) = (rows.as_ptr().add(r * row_bytes), rows.as_ptr().add((r + 1) * row_bytes));
        let mut t = 0;
        while t + 4 <= n_tok {
            let mut acc0 = [_mm512_setzero_si512(); 4];
            let mut acc1 = [_mm512_setzero_si512(); 4];
            for b in 0..blocks {
                let c0 = decode(row0.add(b * 64));
                let c1 = decode(row1.add(b * 64));
                for j in 0..4 {
                    let x = xp.add((t + j) * padded + b * BLOCK);
                    for i in 0..4 {
                        let xv = load_x(x.add(i * 64));
                        acc0[j] = _mm512_dpbusd_epi32(acc0[j], c0[i], xv);
                        acc1[j] = _mm512_dpbusd_epi32(acc1[j], c1[i], xv);
                    }
                }
            }
            for j in 0..4 {
                out[r * n_tok + t + j] = _mm512_reduce_add_epi32(acc0[j]) - act_sums[t + j];
                out[(r + 1) * n_tok + t + j] = _mm512_reduce_add_epi32(acc1[j]) - act_sums[t + j];
            }
            t += 4;
        }
        for rr in r..r + 2 {
            for tt in t..n_tok {
                out[rr * n_tok + tt] =
                    row_token(rows.as_ptr().add(rr * row_bytes), xp.add(tt * padded), blocks) - act_sums[tt];
            }
        }
        r += 2;
    }
    for r in r..n_rows {
        let row = rows.as_ptr().add(r * row_bytes);
        let mut t = 0;
        // Four tokens at a time: each block is decoded once for all four.
        while t + 4 <= n_tok {
            let mut acc = [_mm512_setzero_si512(); 4];
            for b in 0..blocks {
                let codes = decode(row.add(b * 64));
                for (j, a) in acc.iter_mut().enumerate() {
                    let x = xp.add((t + j) * padded + b * BLOCK);
                    for (i, c) in codes.iter().enumerate() {
                        *a = _mm512_dpbusd_epi32(*a, *c, load_x(x.add(i * 64)));
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                out[r * n_tok + t + j] = _mm512_reduce_add_epi32(*a) - act_sums[t + j];
            }
            t += 4;
        }
        while t < n_tok {
            out[r * n_tok + t] = row_token(row, xp.add(t * padded), blocks) - act_sums[t];
            t += 1;
        }
    }
}

/// `sum((w+1)·x)` of one packed row and one token, with four independent accumulator chains.
#[inline(always)]
unsafe fn row_token(row: *const u8, x: *const i8, blocks: usize) -> i32 {
    let mut acc = [_mm512_setzero_si512(); 4];
    for b in 0..blocks {
        let codes = decode(row.add(b * 64));
        for i in 0..4 {
            acc[i] = _mm512_dpbusd_epi32(acc[i], codes[i], load_x(x.add(b * BLOCK + i * 64)));
        }
    }
    let sum = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
    _mm512_reduce_add_epi32(sum)
}

/// `sum(f16(row[i]) * x[i])` for a little-endian f16 row.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(row.len() >= 2 * n);
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let h = _mm256_loadu_si256(rp.add(2 * (i + 16 * k)) as *const __m256i);
            *a = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
        }
        i += 32;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += half::f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * x[j];
    }
    s
}

/// `sum(row[i] * x[i])` for a little-endian f32 row.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(row.len() >= 4 * n);
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = _mm512_loadu_ps(rp.add(4 * (i + 16 * k)) as *const f32);
            *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
        }
        i += 32;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += f32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]]) * x[j];
    }
    s
}

/// `sum(row[i] as i8 * x[i])`.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_i8(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(row.len() >= n);
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let q = _mm_loadu_si128(rp.add(i + 16 * k) as *const __m128i);
            let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
            *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
        }
        i += 32;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += f32::from(row[j] as i8) * x[j];
    }
    s
}
