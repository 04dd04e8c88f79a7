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

/// Same contract as [`super::portable::ternary_gemm`]: register tiles of rows × tokens over
/// the band (`gemm`), one token at a time through `gemv4` and `row_token`.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    gemm::<false>(rows, row_bytes, xq, act_sums, out)
}

/// [`ternary_gemm`] whose one-token kernels take the codes out of the packed bytes with
/// GFNI's `vgf2p8affineqb` (one instruction per code vector instead of a shift and a mask).
/// The multi-token tiles decode with shifts in both sets: on Zen 4 the affine transform
/// takes `vpdpbusd`'s pipes, the shifts do not (BENCHMARKS.md, "Multi-token ternary GEMM").
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni and gfni ([`gfni_available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,gfni")]
pub unsafe fn ternary_gemm_gfni(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    gemm::<true>(rows, row_bytes, xq, act_sums, out)
}

/// [`ternary_gemm`]; `GFNI` picks the decode of the one-token kernels. Always inlined, so
/// that it is compiled with the target features of the entry point that calls it.
///
/// Tokens go in groups of up to four; each group passes over every row of the band in
/// register tiles of rows × tokens ([`tiles`]), one token alone through the one-token
/// kernels ([`gemv4`], [`row_token`]). The first group's tiles ask for the band's lines
/// ahead, as the one-token kernels do: in a decoding step of a few rows the band comes from
/// memory, and later groups find it in cache.
#[inline(always)]
unsafe fn gemm<const GFNI: bool>(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    // SAFETY (for every kernel below): `band_shape` checked that `rows` holds `n_rows`
    // rows of `blocks` 64-byte blocks, `xq` `n_tok` activation rows of `padded` bytes and
    // `out` `n_rows · n_tok` values; the tiles read rows `r..r + R < n_rows` and tokens
    // `t..t + T ≤ n_tok`, and write `out[(t + j) · n_rows + r + i]` inside those bounds,
    // through `out`'s pointer while `out` stays mutably borrowed by this call.
    let (n_tok, padded, n_rows, blocks) = super::band_shape(rows, row_bytes, xq, act_sums, out);
    let band = Band { w: rows.as_ptr(), row_bytes, padded, n_rows, blocks, act_sums, out: out.as_mut_ptr() };
    if n_tok > 1 {
        // The tiles' prefetch runs `PREFETCH` bytes ahead of their reads: ask for the band's
        // first lines now. A prefetch is a hint that never faults.
        for line in (0..rows.len().min(PREFETCH)).step_by(64) {
            _mm_prefetch::<_MM_HINT_NTA>(rows.as_ptr().wrapping_add(line) as *const i8);
        }
    }
    let mut t = 0;
    while t < n_tok {
        let x = xq.as_ptr().add(t * padded);
        let n = (n_tok - t).min(4);
        match (n, t == 0) {
            (4, true) => tiles::<4, 4, 1, true>(&band, x, t),
            (4, false) => tiles::<4, 4, 1, false>(&band, x, t),
            (3, _) => tiles::<4, 3, 1, true>(&band, x, t),
            (2, _) => tiles::<8, 2, 4, true>(&band, x, t),
            _ => one_token::<GFNI>(&band, x, t),
        }
        t += n;
    }
}

/// One band of [`gemm`]: its packed rows and outputs (pointers checked by `band_shape`).
struct Band<'a> {
    w: *const u8,
    row_bytes: usize,
    padded: usize,
    n_rows: usize,
    blocks: usize,
    act_sums: &'a [i32],
    out: *mut i32,
}

/// Token `t` (activations at `x`) over every row of the band: four rows at a time, then one.
#[inline(always)]
unsafe fn one_token<const GFNI: bool>(band: &Band, x: *const i8, t: usize) {
    let (n_rows, out) = (band.n_rows, band.out.add(t * band.n_rows));
    let mut r = 0;
    while r + 4 <= n_rows {
        let s: [i32; 16] =
            core::mem::transmute(gemv4::<GFNI>(band.w.add(r * band.row_bytes), band.row_bytes, x, band.blocks));
        for i in 0..4 {
            *out.add(r + i) = s[4 * i] + s[4 * i + 1] + s[4 * i + 2] + s[4 * i + 3] - band.act_sums[t];
        }
        r += 4;
    }
    while r < n_rows {
        *out.add(r) = row_token::<GFNI>(band.w.add(r * band.row_bytes), x, band.blocks) - band.act_sums[t];
        r += 1;
    }
}

/// Tokens `t..t + T` (activations at `x`) over every row of the band, `R` rows at a time in
/// [`tile`]s, the rows left over `R1` at a time, then one at a time. `PF`: ask for the band's
/// lines ahead ([`tile`]).
#[inline(always)]
unsafe fn tiles<const R: usize, const T: usize, const R1: usize, const PF: bool>(band: &Band, x: *const i8, t: usize) {
    let mut r = tile_rows::<R, T, PF>(band, x, t, 0);
    if R1 > 1 {
        r = tile_rows::<R1, T, PF>(band, x, t, r);
    }
    tile_rows::<1, T, PF>(band, x, t, r);
}

/// [`tile`]s of `R` rows from row `r` while `R` rows remain; returns the first row not done.
#[inline(always)]
unsafe fn tile_rows<const R: usize, const T: usize, const PF: bool>(
    band: &Band,
    x: *const i8,
    t: usize,
    mut r: usize,
) -> usize {
    while r + R <= band.n_rows {
        let s: [i32; 16] = core::mem::transmute(tile::<R, T, PF>(
            band.w.add(r * band.row_bytes),
            band.row_bytes,
            x,
            band.padded,
            band.blocks,
        ));
        for i in 0..R {
            for j in 0..T {
                *band.out.add((t + j) * band.n_rows + r + i) = s[i * T + j] - band.act_sums[t + j];
            }
        }
        r += R;
    }
    r
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

/// `sum((w+1)·x)` of `R` consecutive rows (`row_bytes` apart) × `T` tokens (`padded`
/// apart), `R · T ≤ 16`: lane `T·i + j` is row `i`, token `j`. Each decoded code vector feeds
/// `T` tokens and each activation vector `R` rows, from `R · T` accumulators in registers.
///
/// Codes come out with a shift and a mask ([`field`] without GFNI): on Zen 4 the shifts and
/// masks run beside `vpdpbusd`, while `vgf2p8affineqb` takes its pipes (BENCHMARKS.md,
/// "Multi-token ternary GEMM"). With `PF`, each block step asks for the next `R` lines, in
/// address order, [`PREFETCH`] bytes ahead of the group's rows, as [`gemv4`] does.
#[inline(always)]
unsafe fn tile<const R: usize, const T: usize, const PF: bool>(
    w: *const u8,
    row_bytes: usize,
    x: *const i8,
    padded: usize,
    blocks: usize,
) -> __m512i {
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    for b in 0..blocks {
        if PF {
            for i in 0..R {
                // A prefetch is a hint that never faults, so the address may lie past the band.
                _mm_prefetch::<_MM_HINT_NTA>(w.wrapping_add(PREFETCH + (R * b + i) * 64) as *const i8);
            }
        }
        let mut raw = [_mm512_setzero_si512(); R];
        for (i, r) in raw.iter_mut().enumerate() {
            *r = _mm512_loadu_si512(w.add(i * row_bytes + b * 64) as *const _);
        }
        for g in 0..4 {
            // The tokens' activations first, then each row's codes as they are used: live
            // registers R·T + R + T + 1 (an 8 × 2 tile holding all eight code vectors
            // as well would need 34 of the 32).
            let mut xv = [_mm512_setzero_si512(); T];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = load_x(x.add(j * padded + b * BLOCK + g * 64));
            }
            for (a, &r) in acc.iter_mut().zip(&raw) {
                let c = field::<false>(r, g);
                for (a, &v) in a.iter_mut().zip(&xv) {
                    *a = _mm512_dpbusd_epi32(*a, c, v);
                }
            }
        }
    }
    let mut all = [_mm512_setzero_si512(); 16];
    for i in 0..R {
        for j in 0..T {
            all[T * i + j] = acc[i][j];
        }
    }
    reduce16(all)
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
    dot_tile::<super::F16Row, 1, 1>([row], [x])[0][0]
}

/// How one float encoding's row values widen to f32 for [`dot_tile`]: 16 values at a time,
/// and one at a time for the tail; and what one row alone asks for ahead of its reads.
trait Widen: super::FloatRow {
    /// Values `i .. i + 16` of the row at `p`.
    ///
    /// # Safety
    /// `p` must have `(i + 16) · WIDTH` readable bytes; the CPU must support avx512f.
    unsafe fn widen(p: *const u8, i: usize) -> __m512;
    /// Asks for lines ahead of values `i .. i + 32` of the row at `p` (a hint: any address).
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8, _i: usize) {}
}

/// Little-endian f16 values, converted by `vcvtph2ps`; one row alone asks for no lines
/// ahead (see [`dot_f16`]).
impl Widen for super::F16Row {
    #[inline(always)]
    unsafe fn widen(p: *const u8, i: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i))
    }
}

/// Little-endian f32 values, two lines asked for [`PREFETCH`] ahead per 32 values.
impl Widen for super::F32Row {
    #[inline(always)]
    unsafe fn widen(p: *const u8, i: usize) -> __m512 {
        _mm512_loadu_ps(p.add(4 * i) as *const f32)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8, i: usize) {
        _mm_prefetch::<_MM_HINT_NTA>(p.wrapping_add(4 * i + PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_NTA>(p.wrapping_add(4 * i + 64 + PREFETCH) as *const i8);
    }
}

/// Int8 values (q8 without its row scale), one line asked for [`PREFETCH`] ahead per 64 values.
impl Widen for super::I8Row {
    #[inline(always)]
    unsafe fn widen(p: *const u8, i: usize) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(i) as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8, i: usize) {
        if i.is_multiple_of(64) {
            _mm_prefetch::<_MM_HINT_NTA>(p.wrapping_add(i + PREFETCH) as *const i8);
        }
    }
}

/// The dots of `R` rows × `N` inputs (all of one length, the rows as long): every pair
/// `(r, t)` sums `W(r)[i] · x_t[i]` in two chains of 16 lanes (values `32s .. 32s + 16`
/// into the first, the next 16 into the second, one FMA each), adds the chains and
/// reduces the lanes with `_mm512_reduce_add_ps`, then adds the tail
/// values one by one: [`dot_f16`]'s order, which is `dot_tile::<super::F16Row, 1, 1>`. A row's 16 values
/// are widened once for the `N` inputs, an input's 16 loaded once for the `R` rows.
#[inline(always)]
unsafe fn dot_tile<W: Widen, const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    let n = super::tile_len(&rows, &xs, W::WIDTH);
    let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
    let mut i = 0;
    // The tile's own bytes per 32-value step, R rows' worth (a multiple of 32).
    let step_bytes = R * 32 * W::WIDTH;
    while i + 32 <= n {
        if R == 1 {
            W::prefetch(rows[0].as_ptr(), i);
        } else {
            // Several rows (consecutive in the matrix) stream at once: ask for the lines of
            // one sequential stretch [`PREFETCH`] bytes past the tile's start, a step's worth
            // of lines per step, so that over the tile they cover as many lines in address
            // order (as `gemv4` does). A prefetch is a hint: any address is fine.
            let ahead = rows[0].as_ptr().wrapping_add(PREFETCH + i / 32 * step_bytes);
            let mut b = 0;
            while b < step_bytes {
                _mm_prefetch::<_MM_HINT_NTA>(ahead.wrapping_add(b) as *const i8);
                b += 64;
            }
        }
        for k in 0..2 {
            // In bounds: values `i + 16k .. i + 16k + 16` < n of each row and input (checked above).
            let mut w = [_mm512_setzero_ps(); R];
            for (w, row) in w.iter_mut().zip(&rows) {
                *w = W::widen(row.as_ptr(), i + 16 * k);
            }
            for (t, x) in xs.iter().enumerate() {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i + 16 * k));
                for (a, &w) in acc.iter_mut().zip(&w) {
                    a[t][k] = _mm512_fmadd_ps(w, xv, a[t][k]);
                }
            }
        }
        i += 32;
    }
    let mut s = [[0f32; N]; R];
    for (s, a) in s.iter_mut().zip(&acc) {
        for (s, a) in s.iter_mut().zip(a) {
            *s = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        }
    }
    super::add_tails::<W, R, N>(s, &rows, &xs, i)
}

/// [`dot_tile`] of f16 rows, for `many_dots!`.
#[inline(always)]
unsafe fn f16_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    dot_tile::<super::F16Row, R, N>(rows, xs)
}

/// `sum(row[i] * x[i])` for a little-endian f32 row.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    dot_tile::<super::F32Row, 1, 1>([row], [x])[0][0]
}

/// [`dot_tile`] of f32 rows, for `many_dots!`.
#[inline(always)]
unsafe fn f32_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    dot_tile::<super::F32Row, R, N>(rows, xs)
}

/// `sum(row[i] as i8 * x[i])`.
///
/// # Safety
/// The CPU must support avx512f ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_i8(row: &[u8], x: &[f32]) -> f32 {
    dot_tile::<super::I8Row, 1, 1>([row], [x])[0][0]
}

/// [`dot_tile`] of int8 rows, for `many_dots!`.
#[inline(always)]
unsafe fn i8_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    dot_tile::<super::I8Row, R, N>(rows, xs)
}

block_dots!("avx512f");
many_dots!("avx512f"; dots_f16 = f16_n / 4 x 2, dots_f32 = f32_n / 4 x 2, dots_i8 = i8_n / 4 x 2, dots_q6 = q6_n / 1 x 4, dots_q4 = q4_n / 1 x 4);

/// One q6 (`Q6`) or q4 block row: a block's 16 nibble bytes, widened to 16 int32 lanes,
/// give the low bits of values 0..15 (the low nibble) and 16..31 (shifted by 4). `vpermps`
/// reads the low 4 bits of each lane as an index, so one permute from a 16-entry table turns
/// a nibble into a float with no mask: q4's value `c - 8`, or q6's `lo - 32`. q6's 8 bytes of
/// top bits, loaded twice into 16 lanes and shifted per lane (0/2 for values 0..15, 4/6 for
/// 16..31), index a table of `16 · (i & 3)`, which is added. Lane `l` then holds values `l`
/// and `l + 16`, as the portable order wants. Each of the `N` inputs `xs` takes a block's
/// values, decoded once, into its own accumulator.
#[inline(always)]
unsafe fn dot_blocks<const Q6: bool, const N: usize>(xs: [&[f32]; N], row: &[u8]) -> [f32; N] {
    let (bb, blocks) = super::q_blocks(row, &xs, Q6);
    let rp = row.as_ptr();
    // Every table entry and every sum below is a small integer: exact in f32.
    let q6_low =
        _mm512_setr_ps(-32., -31., -30., -29., -28., -27., -26., -25., -24., -23., -22., -21., -20., -19., -18., -17.);
    let q6_high = _mm512_setr_ps(0., 16., 32., 48., 0., 16., 32., 48., 0., 16., 32., 48., 0., 16., 32., 48.);
    let lo_shift = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    let hi_shift = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
    let q4_values = _mm512_setr_ps(-8., -7., -6., -5., -4., -3., -2., -1., 0., 1., 2., 3., 4., 5., 6., 7.);
    let mut acc = [_mm512_setzero_ps(); N];
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
        for (acc, x) in acc.iter_mut().zip(&xs) {
            let xa = _mm512_loadu_ps(x.as_ptr().add(32 * b));
            let xb = _mm512_loadu_ps(x.as_ptr().add(32 * b + 16));
            let p = _mm512_fmadd_ps(qb, xb, _mm512_mul_ps(qa, xa));
            *acc = _mm512_fmadd_ps(d, p, *acc);
        }
    }
    acc.map(|acc| {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` has room for the 16 values stored.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        super::portable::sum16(lanes)
    })
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
