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

use super::PREFETCH;
use core::arch::x86_64::*;
use tern_format::ternary::BLOCK;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// The codes of 64-column group `g` of a loaded 64-byte block (bits `2g..2g + 2` of every
/// byte): a shift and a mask, or with `GFNI` (only where the CPU has it) one affine
/// transform for groups 1–3 ([`FIELD`]).
#[inline(always)]
unsafe fn field<const GFNI: bool>(w: __m512i, g: usize) -> __m512i {
    let m = _mm512_set1_epi8(3);
    match g {
        0 => _mm512_and_si512(w, m),
        _ if GFNI => _mm512_gf2p8affine_epi64_epi8::<0>(w, _mm512_set1_epi64(FIELD[g])),
        1 => _mm512_and_si512(_mm512_srli_epi16::<2>(w), m),
        2 => _mm512_and_si512(_mm512_srli_epi16::<4>(w), m),
        _ => _mm512_and_si512(_mm512_srli_epi16::<6>(w), m),
    }
}

/// Codes of the four 64-column groups of one 64-byte block.
#[inline(always)]
unsafe fn decode<const GFNI: bool>(block: *const u8) -> [__m512i; 4] {
    let w = _mm512_loadu_si512(block as *const _);
    [field::<GFNI>(w, 0), field::<GFNI>(w, 1), field::<GFNI>(w, 2), field::<GFNI>(w, 3)]
}

#[inline(always)]
unsafe fn load_x(x: *const i8) -> __m512i {
    _mm512_loadu_si512(x as *const _)
}

/// Whether this CPU also has GFNI, whose affine byte transform moves one 2-bit field of
/// every byte to its low bits in one instruction ([`ternary_gemm_gfni`]).
pub fn gfni_available() -> bool {
    available() && is_x86_feature_detected!("gfni")
}

/// Same contract as [`super::portable::ternary_gemm`].
///
/// Tokens go in groups of four (outer loop) so their activations stay in L1 while the
/// band's packed rows stream past, four rows at a time: a 4 × 4 tile keeps 16 independent
/// accumulator chains in registers, each decoded code vector feeds four tokens and each
/// activation vector four rows. Leftover tokens take the 4-row GEMV path.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    gemm::<false>(rows, row_bytes, xq, act_sums, out)
}

/// [`ternary_gemm`] taking the codes out of the packed bytes with GFNI's `vgf2p8affineqb`
/// (one instruction per code vector instead of a shift and a mask), in the prompt's
/// 4 × 4 tiles and in the one-token kernels alike. With shifts, taking the codes out is a
/// noticeable part of a prompt's time (figures in BENCHMARKS.md).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni and gfni ([`gfni_available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,gfni")]
pub unsafe fn ternary_gemm_gfni(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    gemm::<true>(rows, row_bytes, xq, act_sums, out)
}

/// [`ternary_gemm`], its tiles decoding with GFNI or with shifts. Always inlined, so that
/// it is compiled with the target features of the entry point that calls it.
#[inline(always)]
unsafe fn gemm<const GFNI: bool>(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    // Every pointer below stays inside the slices (checked by `band_shape`).
    let (n_tok, padded, n_rows, blocks) = super::band_shape(rows, row_bytes, xq, act_sums, out);
    let (wp, xp) = (rows.as_ptr(), xq.as_ptr());
    let mut t = 0;
    while t + 4 <= n_tok {
        let x = xp.add(t * padded);
        let sums = _mm512_broadcast_i32x4(_mm_loadu_si128(act_sums.as_ptr().add(t) as *const __m128i));
        let mut r = 0;
        while r + 4 <= n_rows {
            let s = _mm512_sub_epi32(tile4x4::<GFNI>(wp.add(r * row_bytes), row_bytes, x, padded, blocks), sums);
            let s: [i32; 16] = core::mem::transmute(s);
            for i in 0..4 {
                for j in 0..4 {
                    out[(t + j) * n_rows + r + i] = s[4 * i + j];
                }
            }
            r += 4;
        }
        while r < n_rows {
            let s = tile1x4::<GFNI>(wp.add(r * row_bytes), x, padded, blocks);
            for j in 0..4 {
                out[(t + j) * n_rows + r] = s[j] - act_sums[t + j];
            }
            r += 1;
        }
        t += 4;
    }
    while t < n_tok {
        let x = xp.add(t * padded);
        let mut r = 0;
        while r + 4 <= n_rows {
            let s: [i32; 16] = core::mem::transmute(gemv4::<GFNI>(wp.add(r * row_bytes), row_bytes, x, blocks));
            for i in 0..4 {
                out[t * n_rows + r + i] = s[4 * i] + s[4 * i + 1] + s[4 * i + 2] + s[4 * i + 3] - act_sums[t];
            }
            r += 4;
        }
        while r < n_rows {
            out[t * n_rows + r] = row_token::<GFNI>(wp.add(r * row_bytes), x, blocks) - act_sums[t];
            r += 1;
        }
        t += 1;
    }
}

/// Horizontal sums of 16 vectors: lane k of the result is the sum of the lanes of `a[k]`.
#[inline(always)]
unsafe fn reduce16(a: [__m512i; 16]) -> __m512i {
    // Within each 128-bit lane: pairs of vectors, then quadruples, interleaved. (Plain
    // loops, not closures: a closure would not inherit this function's target features,
    // and the intrinsics would stop being inlined.)
    let mut t = [_mm512_setzero_si512(); 8];
    for p in 0..8 {
        let (x, y) = (a[2 * p], a[2 * p + 1]);
        t[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
    }
    let mut u = [_mm512_setzero_si512(); 4];
    for q in 0..4 {
        let (x, y) = (t[2 * q], t[2 * q + 1]);
        u[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    }
    // Dword m of 128-bit lane L of u[q] is the part of a[4q + m] in lane L: add the lanes.
    let mut v = [_mm512_setzero_si512(); 2];
    for p in 0..2 {
        let (x, y) = (u[2 * p], u[2 * p + 1]);
        v[p] = _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(x, y), _mm512_shuffle_i32x4::<0xDD>(x, y));
    }
    _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(v[0], v[1]), _mm512_shuffle_i32x4::<0xDD>(v[0], v[1]))
}

/// Per 2-bit field `g` of a byte, the `vgf2p8affineqb` matrix that moves it to bits 0–1:
/// bit `i` of each result byte is the parity of the source byte ANDed with byte `7 - i`
/// of the matrix, so a matrix with bit `2g` in byte 7 and bit `2g + 1` in byte 6 (and
/// nothing else) gives field `g` in bits 0–1 and zeros above.
const FIELD: [i64; 4] = {
    let mut m = [0i64; 4];
    let mut g = 0;
    while g < 4 {
        m[g] = (1 << (2 * g)) << 56 | (1 << (2 * g + 1)) << 48;
        g += 1;
    }
    m
};

/// `sum((w+1)·x)` of four rows × four tokens; lane `4i + j` is row `i`, token `j`. With
/// `GFNI`, codes come from [`field`]'s affine transforms.
#[inline(always)]
unsafe fn tile4x4<const GFNI: bool>(
    w: *const u8,
    row_bytes: usize,
    x: *const i8,
    padded: usize,
    blocks: usize,
) -> __m512i {
    let mut acc = [_mm512_setzero_si512(); 16];
    for b in 0..blocks {
        let mut raw = [_mm512_setzero_si512(); 4];
        for (i, r) in raw.iter_mut().enumerate() {
            *r = _mm512_loadu_si512(w.add(i * row_bytes + b * 64) as *const _);
        }
        for g in 0..4 {
            let mut codes = [_mm512_setzero_si512(); 4];
            for (c, &r) in codes.iter_mut().zip(&raw) {
                *c = field::<GFNI>(r, g);
            }
            for j in 0..4 {
                let xv = load_x(x.add(j * padded + b * BLOCK + g * 64));
                for i in 0..4 {
                    acc[4 * i + j] = _mm512_dpbusd_epi32(acc[4 * i + j], codes[i], xv);
                }
            }
        }
    }
    reduce16(acc)
}

/// `sum((w+1)·x)` of one row × four tokens.
#[inline(always)]
unsafe fn tile1x4<const GFNI: bool>(row: *const u8, x: *const i8, padded: usize, blocks: usize) -> [i32; 4] {
    let mut acc = [_mm512_setzero_si512(); 4];
    for b in 0..blocks {
        let codes = decode::<GFNI>(row.add(b * 64));
        for (j, a) in acc.iter_mut().enumerate() {
            for (i, c) in codes.iter().enumerate() {
                *a = _mm512_dpbusd_epi32(*a, *c, load_x(x.add(j * padded + b * BLOCK + i * 64)));
            }
        }
    }
    let mut s = [0i32; 4];
    for (s, &a) in s.iter_mut().zip(&acc) {
        *s = _mm512_reduce_add_epi32(a);
    }
    s
}

/// `sum((w+1)·x)` of four rows × one token as 16 partial sums: lanes `4i..4i+4` belong to row `i`.
///
/// The four rows are contiguous, `4 · blocks` lines. Each step over a block reads one line
/// of each row and asks for the next four lines, in address order, of the stretch that
/// starts [`PREFETCH`] bytes past the group, so over the group the prefetches cover the
/// same number of lines in one sequential run. (Prefetching each row's own line ahead
/// instead, four interleaved strided streams, streamed slower: BENCHMARKS.md.)
#[inline(always)]
unsafe fn gemv4<const GFNI: bool>(w: *const u8, row_bytes: usize, x: *const i8, blocks: usize) -> __m512i {
    let mut acc = [_mm512_setzero_si512(); 16];
    for b in 0..blocks {
        for i in 0..4 {
            // A prefetch is a hint that never faults, so the address may lie past the band.
            _mm_prefetch::<_MM_HINT_NTA>(w.wrapping_add(PREFETCH + (4 * b + i) * 64) as *const i8);
        }
        for i in 0..4 {
            let codes = decode::<GFNI>(w.add(i * row_bytes + b * 64));
            for g in 0..4 {
                acc[4 * i + g] = _mm512_dpbusd_epi32(acc[4 * i + g], codes[g], load_x(x.add(b * BLOCK + g * 64)));
            }
        }
    }
    reduce16(acc)
}

/// `sum((w+1)·x)` of one packed row and one token, with four independent accumulator chains.
#[inline(always)]
unsafe fn row_token<const GFNI: bool>(row: *const u8, x: *const i8, blocks: usize) -> i32 {
    let mut acc = [_mm512_setzero_si512(); 4];
    for b in 0..blocks {
        let codes = decode::<GFNI>(row.add(b * 64));
        for i in 0..4 {
            acc[i] = _mm512_dpbusd_epi32(acc[i], codes[i], load_x(x.add(b * BLOCK + i * 64)));
        }
    }
    let sum = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
    _mm512_reduce_add_epi32(sum)
}

/// [`super::portable::read_sum`] with 512-bit loads and the kernels' software prefetch.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn read_sum(bytes: &[u8]) -> u64 {
    let p = bytes.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    while i + 256 <= bytes.len() {
        for (k, a) in acc.iter_mut().enumerate() {
            _mm_prefetch::<_MM_HINT_NTA>(p.wrapping_add(i + 64 * k + PREFETCH) as *const i8);
            *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(i + 64 * k) as *const __m512i));
        }
        i += 256;
    }
    let sum = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
    (_mm512_reduce_add_epi64(sum) as u64).wrapping_add(super::portable::read_sum(&bytes[i..]))
}

/// `sum(f16(row[i]) * x[i])` for a little-endian f16 row.
///
/// Unlike the other one-token kernels it asks for no lines ahead: on the AVX-512 EPYC of
/// BENCHMARKS.md ("Output types at the 2B-4T shape") the output matvec read 99–101% of the
/// streaming probe without software prefetch and 71–80% with it (NTA or T0, 8 or 16 KB
/// ahead), the hardware prefetchers following its one sequential stream on their own.
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
        _mm_prefetch::<_MM_HINT_NTA>(rp.wrapping_add(4 * i + PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_NTA>(rp.wrapping_add(4 * i + 64 + PREFETCH) as *const i8);
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
        if i % 64 == 0 {
            _mm_prefetch::<_MM_HINT_NTA>(rp.wrapping_add(i + PREFETCH) as *const i8);
        }
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

block_dots!("avx512f");

/// One q6 (`Q6`) or q4 block row: a block's 16 nibble bytes, widened to 16 int32 lanes,
/// give the low bits of values 0..15 (the low nibble) and 16..31 (shifted by 4). `vpermps`
/// reads the low 4 bits of each lane as an index, so one permute from a 16-entry table turns
/// a nibble into a float with no mask: q4's value `c - 8`, or q6's `lo - 32`. q6's 8 bytes of
/// top bits, loaded twice into 16 lanes and shifted per lane (0/2 for values 0..15, 4/6 for
/// 16..31), index a table of `16 · (i & 3)`, which is added. Lane `l` then holds values `l`
/// and `l + 16`, as the portable order wants.
#[inline(always)]
unsafe fn dot_blocks<const Q6: bool>(row: &[u8], x: &[f32]) -> f32 {
    let (bb, blocks) = super::q_blocks(row, x, Q6);
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    // Every table entry and every sum below is a small integer: exact in f32.
    let q6_low =
        _mm512_setr_ps(-32., -31., -30., -29., -28., -27., -26., -25., -24., -23., -22., -21., -20., -19., -18., -17.);
    let q6_high = _mm512_setr_ps(0., 16., 32., 48., 0., 16., 32., 48., 0., 16., 32., 48., 0., 16., 32., 48.);
    let lo_shift = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    let hi_shift = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
    let q4_values = _mm512_setr_ps(-8., -7., -6., -5., -4., -3., -2., -1., 0., 1., 2., 3., 4., 5., 6., 7.);
    let mut acc = _mm512_setzero_ps();
    for b in 0..blocks {
        // In bounds: block `b` is bytes `b·bb .. (b+1)·bb` of `row`, and its values
        // `32b .. 32b + 32` of `x` (`q_blocks` checked both). Two blocks are under 64 bytes,
        // so asking every other block asks for every line.
        let blk = rp.add(b * bb);
        if b % 2 == 0 {
            _mm_prefetch::<_MM_HINT_NTA>(blk.wrapping_add(PREFETCH) as *const i8);
        }
        let d = _mm512_cvtph_ps(_mm256_set1_epi16((blk as *const i16).read_unaligned()));
        let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(2) as *const __m128i));
        let (qa, qb) = if Q6 {
            let top = _mm512_cvtepu8_epi32(_mm_set1_epi64x((blk.add(18) as *const i64).read_unaligned()));
            let high = |shift| _mm512_permutexvar_ps(_mm512_srlv_epi32(top, shift), q6_high);
            let lo = _mm512_permutexvar_ps(v, q6_low);
            let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), q6_low);
            (_mm512_add_ps(lo, high(lo_shift)), _mm512_add_ps(hi, high(hi_shift)))
        } else {
            (_mm512_permutexvar_ps(v, q4_values), _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), q4_values))
        };
        let xa = _mm512_loadu_ps(xp.add(32 * b));
        let xb = _mm512_loadu_ps(xp.add(32 * b + 16));
        let p = _mm512_fmadd_ps(qb, xb, _mm512_mul_ps(qa, xa));
        acc = _mm512_fmadd_ps(d, p, acc);
    }
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    super::portable::sum16(lanes)
}

/// f16 keys and values widened by `vcvtph2ps`: only for this module's `attend` and
/// `attend_tokens`, in the kernel sets [`super::Kernels`] builds after checking
/// [`available`].
pub(super) struct F16Lanes;

impl super::attend::KvRead for F16Lanes {
    type Elem = u16;
    #[inline(always)]
    fn lanes(src: &[u16]) -> [f32; 16] {
        let src = &src[..16];
        // SAFETY: the load reads the 32 bytes of `src`. The conversion needs avx512f: this type is used only
        // in this module's kernels, which run only where `available()` (the module's
        // features) holds.
        unsafe { std::mem::transmute::<__m512, [f32; 16]>(_mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast()))) }
    }
}

float_ops!("avx512f,avx512bw", score_tile = (8, 2), value_tile = (8, 32));
