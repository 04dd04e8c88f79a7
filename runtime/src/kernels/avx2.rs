//! AVX2 kernels: ternary GEMM with `vpmaddubsw` and F16C/FMA float dot products.
//!
//! A 64-byte block is taken as two 32-byte halves; half `h`, shifted by `2i` and masked,
//! holds the codes of columns `64i + 32h .. 64i + 32h + 32` of the block. `maddubs`
//! multiplies codes (unsigned, ≤ 2) by activations (signed) and adds pairs into int16:
//! at most 2·128·2 = 512 in magnitude, so it never saturates; `madd` with ones widens
//! to int32 (every four `maddubs`, or in the prompt tile every `I16_BLOCKS` blocks). The
//! prompt tile of two rows × four tokens is inline assembly (`block_2x4`). As in the
//! AVX-512 kernel, `sum(x)` is subtracted once. Where the CPU also has AVX-VNNI, a second
//! kernel set uses its 256-bit `vpdpbusd` instead of `maddubs` + `madd`
//! ([`ternary_gemm_vnni`]); everything else is shared.
//!
//! Every function here is `unsafe` because it requires the CPU features in its
//! `target_feature`; `Kernels` only hands them out after detecting those features.

use super::PREFETCH;
use core::arch::x86_64::*;
use tern_format::ternary::BLOCK;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Same contract as [`super::portable::ternary_gemm`]: tokens in groups of four over
/// every row ([`super::gemm_by_rows`]).
///
/// # Safety
/// The CPU must support avx2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn ternary_gemm(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    super::gemm_by_rows::<Maddubs>(rows, row_bytes, xq, act_sums, out)
}

/// Whether this CPU also has AVX-VNNI: `vpdpbusd` on 256-bit vectors, VEX-encoded (Intel's
/// client cores since Alder Lake, which have no AVX-512, and AMD's since Zen 5).
pub fn vnni_available() -> bool {
    available() && is_x86_feature_detected!("avxvnni")
}

/// [`ternary_gemm`] with AVX-VNNI's `vpdpbusd` in place of `maddubs` + `madd`.
///
/// # Safety
/// The CPU must support avx2 and avxvnni ([`vnni_available`]).
#[target_feature(enable = "avx2,avxvnni")]
pub unsafe fn ternary_gemm_vnni(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    super::gemm_by_rows::<Dpbusd>(rows, row_bytes, xq, act_sums, out)
}

/// The codes of one 32-byte half block: vector `i` holds bits `2i..2i + 2` of every byte.
#[inline(always)]
unsafe fn decode(half: *const u8) -> [__m256i; 4] {
    let w = _mm256_loadu_si256(half as *const __m256i);
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(w, m),
        _mm256_and_si256(_mm256_srli_epi16::<2>(w), m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(w), m),
        _mm256_and_si256(_mm256_srli_epi16::<6>(w), m),
    ]
}

/// The sum of the eight int32 lanes of `v`.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The sums of the eight int32 lanes of each of `v`'s four vectors (three horizontal adds
/// and one of the two halves, instead of four separate reductions).
#[inline(always)]
unsafe fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
    let s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let mut out = [0i32; 4];
    _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
    out
}

struct Maddubs;

/// How many blocks `Maddubs::rows2_tokens4` adds up in int16 lanes before widening them
/// to int32. Per block a (row, token) lane takes eight `maddubs` results (two halves ×
/// four code vectors) of `c·x + c'·x'` with codes ≤ 2 and activations in -128..=127: each
/// in -512..=508, so any partial sum of at most 8 blocks lies in -32768..=32512, inside
/// int16 (`tests/kernels.rs` has the extremes, and fails with 9).
const I16_BLOCKS: usize = 8;

impl super::RowTokens for Maddubs {
    /// `sum((w+1)·x)` of one packed row and `T` tokens (activation rows `padded` apart).
    #[inline(always)]
    unsafe fn row_tokens<const T: usize>(row: *const u8, x: *const i8, padded: usize, blocks: usize) -> [i32; T] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); T];
        for b in 0..blocks {
            if T == 1 {
                // One token streams every weight once: ask for the line `PREFETCH` bytes
                // ahead (rows come one after another, so this runs in address order). A
                // prefetch is a hint that never faults, so the address may lie past the band.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * 64 + PREFETCH) as *const i8);
            }
            for h in 0..2 {
                let codes = decode(row.add(b * 64 + h * 32));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let xj = x.add(j * padded + b * BLOCK + h * 32);
                    let mut s16 = _mm256_setzero_si256();
                    for (i, c) in codes.iter().enumerate() {
                        let xv = _mm256_loadu_si256(xj.add(i * 64) as *const __m256i);
                        // Four maddubs of ≤ 512 each: ≤ 2048 in magnitude, still int16.
                        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*c, xv));
                    }
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(s16, ones));
                }
            }
        }
        let mut out = [0i32; T];
        for (o, &v) in out.iter_mut().zip(&acc) {
            *o = hsum_i32(v);
        }
        out
    }

    /// Two rows × four tokens ([`block_2x4`]): each activation vector is loaded once for
    /// both rows (one row at a time, every `maddubs` loaded its own), into eight int16
    /// accumulators, one per (row, token), widened by `madd` with ones every
    /// [`I16_BLOCKS`] blocks (`row_tokens` widens every four `maddubs`).
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows2_tokens4(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
        padded: usize,
        blocks: usize,
    ) -> [[i32; 4]; 2] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 4]; 2];
        let mut b0 = 0;
        while b0 < blocks {
            let end = blocks.min(b0 + I16_BLOCKS);
            let mut s16 = [[_mm256_setzero_si256(); 4]; 2];
            for b in b0..end {
                block_2x4(w.add(b * 64), row_bytes, x.add(b * BLOCK), padded, &mut s16);
            }
            for i in 0..2 {
                for j in 0..4 {
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(s16[i][j], ones));
                }
            }
            b0 = end;
        }
        [hsum4_i32(acc[0]), hsum4_i32(acc[1])]
    }
}

/// One field of one half block for [`block_2x4`]: the two rows' codes (shifted by
/// `$shift`, masked), then for each of the four tokens one activation vector (at `$d`)
/// times both rows' codes, added into the int16 accumulators.
macro_rules! field_2x4 {
    ($d:literal) => {
        concat!("vpand {c0}, {r0}, {m}\n", "vpand {c1}, {r1}, {m}\n", tokens_2x4!($d))
    };
    ($d:literal, $shift:literal) => {
        concat!(
            "vpsrlw {c0}, {r0}, ",
            $shift,
            "\n",
            "vpand {c0}, {c0}, {m}\n",
            "vpsrlw {c1}, {r1}, ",
            $shift,
            "\n",
            "vpand {c1}, {c1}, {m}\n",
            tokens_2x4!($d)
        )
    };
}

/// The four tokens' part of [`field_2x4`]: token `j`'s activation vector at `$d` bytes
/// past `xa`, `xa + pd`, `xb` or `xb + pd`, times both rows' codes `c0` and `c1`.
macro_rules! tokens_2x4 {
    ($d:literal) => {
        concat!(
            "vmovdqu {xv}, ymmword ptr [{xa} + ",
            $d,
            "]\n",
            "vpmaddubsw {p0}, {c0}, {xv}\n",
            "vpaddw {a00}, {a00}, {p0}\n",
            "vpmaddubsw {p1}, {c1}, {xv}\n",
            "vpaddw {a10}, {a10}, {p1}\n",
            "vmovdqu {xv}, ymmword ptr [{xa} + {pd} + ",
            $d,
            "]\n",
            "vpmaddubsw {p0}, {c0}, {xv}\n",
            "vpaddw {a01}, {a01}, {p0}\n",
            "vpmaddubsw {p1}, {c1}, {xv}\n",
            "vpaddw {a11}, {a11}, {p1}\n",
            "vmovdqu {xv}, ymmword ptr [{xb} + ",
            $d,
            "]\n",
            "vpmaddubsw {p0}, {c0}, {xv}\n",
            "vpaddw {a02}, {a02}, {p0}\n",
            "vpmaddubsw {p1}, {c1}, {xv}\n",
            "vpaddw {a12}, {a12}, {p1}\n",
            "vmovdqu {xv}, ymmword ptr [{xb} + {pd} + ",
            $d,
            "]\n",
            "vpmaddubsw {p0}, {c0}, {xv}\n",
            "vpaddw {a03}, {a03}, {p0}\n",
            "vpmaddubsw {p1}, {c1}, {xv}\n",
            "vpaddw {a13}, {a13}, {p1}\n",
        )
    };
}

/// One 64-byte block of two rows (`w`, `w + row_bytes`) times four tokens' activations
/// (`x + j·padded`), added into the int16 accumulators `s` ([row][token]).
///
/// Written in assembly: the 16 vector registers hold exactly the eight accumulators,
/// the two rows' packed bytes, the mask, two code vectors, one activation vector and two
/// products. Compiled from intrinsics, LLVM hoisted the activation loads ahead and
/// spilled accumulators to the stack in the inner loop.
///
/// # Safety
/// The CPU must support avx2; `w` and `w + row_bytes` must have 64 readable bytes, and
/// `x + j·padded` 256 for `j < 4`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_2x4(w: *const u8, row_bytes: usize, x: *const i8, padded: usize, s: &mut [[__m256i; 4]; 2]) {
    let [[a00, a01, a02, a03], [a10, a11, a12, a13]] = s;
    // SAFETY: the loads read `w` and `w + row_bytes` up to 64 bytes on, and `x + j·padded`
    // (`xa`, `xa + pd`, `xb`, `xb + pd`) up to 256 bytes on, which the caller guarantees;
    // the block writes only the registers declared here, touches no stack and no flags,
    // and the caller's target features (avx2) cover every instruction in it.
    core::arch::asm!(
        "vmovdqu {r0}, ymmword ptr [{w}]",
        "vmovdqu {r1}, ymmword ptr [{w} + {rb}]",
        field_2x4!("0"),
        field_2x4!("64", "2"),
        field_2x4!("128", "4"),
        field_2x4!("192", "6"),
        "vmovdqu {r0}, ymmword ptr [{w} + 32]",
        "vmovdqu {r1}, ymmword ptr [{w} + {rb} + 32]",
        field_2x4!("32"),
        field_2x4!("96", "2"),
        field_2x4!("160", "4"),
        field_2x4!("224", "6"),
        w = in(reg) w,
        rb = in(reg) row_bytes,
        xa = in(reg) x,
        xb = in(reg) x.add(2 * padded),
        pd = in(reg) padded,
        m = in(ymm_reg) _mm256_set1_epi8(3),
        a00 = inout(ymm_reg) *a00,
        a01 = inout(ymm_reg) *a01,
        a02 = inout(ymm_reg) *a02,
        a03 = inout(ymm_reg) *a03,
        a10 = inout(ymm_reg) *a10,
        a11 = inout(ymm_reg) *a11,
        a12 = inout(ymm_reg) *a12,
        a13 = inout(ymm_reg) *a13,
        r0 = out(ymm_reg) _,
        r1 = out(ymm_reg) _,
        c0 = out(ymm_reg) _,
        c1 = out(ymm_reg) _,
        xv = out(ymm_reg) _,
        p0 = out(ymm_reg) _,
        p1 = out(ymm_reg) _,
        options(pure, readonly, nostack, preserves_flags)
    );
}

/// The same sums as [`Maddubs`], one `vpdpbusd` per code vector: codes (unsigned) times
/// activations (signed), four products added into each int32 lane.
struct Dpbusd;

impl super::RowTokens for Dpbusd {
    // Index loops with constant bounds: unrolled, every accumulator index is a constant and
    // the accumulators stay in registers (a version choosing the chain by a computed index
    // kept them in memory, and ran several times slower).
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn row_tokens<const T: usize>(row: *const u8, x: *const i8, padded: usize, blocks: usize) -> [i32; T] {
        // Independent accumulator chains, so that the multiply-adds overlap their latency:
        // per token, one for each half of a block, and for one token one per code vector too.
        let mut acc = [[[_mm256_setzero_si256(); 4]; 2]; T];
        for b in 0..blocks {
            if T == 1 {
                // As in `Maddubs`: one token streams the weights, so ask for them ahead.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * 64 + PREFETCH) as *const i8);
            }
            for h in 0..2 {
                let codes = decode(row.add(b * 64 + h * 32));
                for j in 0..T {
                    let xj = x.add(j * padded + b * BLOCK + h * 32);
                    for i in 0..4 {
                        let xv = _mm256_loadu_si256(xj.add(i * 64) as *const __m256i);
                        let c = if T == 1 { i } else { 0 };
                        acc[j][h][c] = _mm256_dpbusd_avx_epi32(acc[j][h][c], codes[i], xv);
                    }
                }
            }
        }
        let mut out = [0i32; T];
        for j in 0..T {
            let a = &acc[j];
            let v = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_add_epi32(a[0][0], a[0][1]), _mm256_add_epi32(a[0][2], a[0][3])),
                _mm256_add_epi32(_mm256_add_epi32(a[1][0], a[1][1]), _mm256_add_epi32(a[1][2], a[1][3])),
            );
            out[j] = hsum_i32(v);
        }
        out
    }

    /// One token through two rows: each activation vector is loaded once for both rows,
    /// and the codes are masked where they are (`w & 3·4^g`, one AND per field, not a
    /// shift and an AND) with one accumulator per (row, field), each shifted back by `2g`
    /// at the end (exact: its sum is a multiple of `4^g`; at most 3·64·128 per product,
    /// so no int32 lane overflows below 2^21 columns). Faster from L2 than one row at a time
    /// (masking in place gained nothing there; figures in BENCHMARKS.md).
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows2_token(w: *const u8, row_bytes: usize, x: *const i8, blocks: usize) -> [i32; 2] {
        let mut acc = [[_mm256_setzero_si256(); 4]; 2];
        for b in 0..blocks {
            for i in 0..2 {
                // As in `row_tokens`, ahead in address order over both rows' lines (a hint
                // never faults, so the address may lie past the band).
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH + (2 * b + i) * 64) as *const i8);
            }
            for h in 0..2 {
                let r0 = _mm256_loadu_si256(w.add(b * 64 + h * 32) as *const __m256i);
                let r1 = _mm256_loadu_si256(w.add(row_bytes + b * 64 + h * 32) as *const __m256i);
                for g in 0..4 {
                    let m = _mm256_set1_epi8((3u8 << (2 * g)) as i8);
                    let xv = _mm256_loadu_si256(x.add(b * BLOCK + g * 64 + h * 32) as *const __m256i);
                    acc[0][g] = _mm256_dpbusd_avx_epi32(acc[0][g], _mm256_and_si256(r0, m), xv);
                    acc[1][g] = _mm256_dpbusd_avx_epi32(acc[1][g], _mm256_and_si256(r1, m), xv);
                }
            }
        }
        for i in 0..2 {
            acc[i][1] = _mm256_srai_epi32::<2>(acc[i][1]);
            acc[i][2] = _mm256_srai_epi32::<4>(acc[i][2]);
            acc[i][3] = _mm256_srai_epi32::<6>(acc[i][3]);
        }
        let mut out = [0i32; 2];
        for i in 0..2 {
            let a = &acc[i];
            out[i] = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(a[0], a[1]), _mm256_add_epi32(a[2], a[3])));
        }
        out
    }

    /// Two rows × four tokens: each activation vector is loaded once for both rows (one
    /// row at a time loaded it once per row, and those loads bounded the kernel). Eight accumulators, one per (row, token), each taking both
    /// halves of a block; with the two rows' codes of one field and one activation vector,
    /// that fits the 16 registers (no spills in the compiled loop). Index loops with
    /// constant bounds, as in `row_tokens`, so that the accumulators stay in registers.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows2_tokens4(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
        padded: usize,
        blocks: usize,
    ) -> [[i32; 4]; 2] {
        let mut acc = [[_mm256_setzero_si256(); 4]; 2];
        for b in 0..blocks {
            for h in 0..2 {
                let c0 = decode(w.add(b * 64 + h * 32));
                let c1 = decode(w.add(row_bytes + b * 64 + h * 32));
                for g in 0..4 {
                    for j in 0..4 {
                        let xv = _mm256_loadu_si256(x.add(j * padded + b * BLOCK + g * 64 + h * 32) as *const __m256i);
                        acc[0][j] = _mm256_dpbusd_avx_epi32(acc[0][j], c0[g], xv);
                        acc[1][j] = _mm256_dpbusd_avx_epi32(acc[1][j], c1[g], xv);
                    }
                }
            }
        }
        [hsum4_i32(acc[0]), hsum4_i32(acc[1])]
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// [`super::portable::read_sum`] with 256-bit loads and the kernels' software prefetch.
///
/// # Safety
/// The CPU must support avx2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn read_sum(bytes: &[u8]) -> u64 {
    let p = bytes.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i + 128 <= bytes.len() {
        for h in 0..2 {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 64 * h + PREFETCH) as *const i8);
        }
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(i + 32 * k) as *const __m256i));
        }
        i += 128;
    }
    let sum = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    let mut lanes = [0u64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
    lanes.iter().fold(super::portable::read_sum(&bytes[i..]), |a, &b| a.wrapping_add(b))
}

/// `sum(f16(row[i]) * x[i])` for a little-endian f16 row.
///
/// # Safety
/// The CPU must support avx2, fma and f16c ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    tile::<super::F16Row, 1, 1>([row], [x])[0][0]
}

/// The length every input of a multi-input dot shares (panics unless they do, and unless
/// `row` holds `width` bytes per value), so a kernel's pointers stay inside the slices.
#[inline(always)]
fn inputs_len<const N: usize>(xs: &[&[f32]; N], row: &[u8], width: usize) -> usize {
    let n = xs.first().map_or(0, |x| x.len());
    assert!(xs.iter().all(|x| x.len() == n) && row.len() >= width * n, "inputs of one length, a row as long");
    n
}

/// How one float encoding's row values widen to f32 for [`tile`]: 8 values at a time, and
/// one at a time for the tail.
trait Widen: super::FloatRow {
    /// Values `i .. i + 8` of the row at `p`.
    ///
    /// # Safety
    /// `p` must have `(i + 8) · WIDTH` readable bytes; the CPU must support avx2, fma, f16c.
    unsafe fn widen(p: *const u8, i: usize) -> __m256;
}

/// Little-endian f16 values, converted by `vcvtph2ps`.
impl Widen for super::F16Row {
    #[inline(always)]
    unsafe fn widen(p: *const u8, i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
    }
}

/// Little-endian f32 values.
impl Widen for super::F32Row {
    #[inline(always)]
    unsafe fn widen(p: *const u8, i: usize) -> __m256 {
        _mm256_loadu_ps(p.add(4 * i) as *const f32)
    }
}

/// The dots of `R` rows × `N` inputs (all of one length, the rows as long): every pair
/// `(r, t)` sums `W(r)[i] · x_t[i]` in two chains of 8 lanes (values `16s .. 16s + 8` into
/// the first, the next 8 into the second), adds the chains, reduces them with `hsum` and
/// adds the tail values one by one: [`dot_f16`]'s and [`dot_f32`]'s order, which is
/// `tile::<_, 1, 1>`. A row's 8 values are widened once for the `N` inputs, an input's 8
/// loaded once for the `R` rows. With `R > 1` the tile asks for one sequential stretch of
/// lines [`PREFETCH`] bytes ahead of its (consecutive) rows, as the AVX-512 tile does.
#[inline(always)]
unsafe fn tile<W: Widen, const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    let n = super::tile_len(&rows, &xs, W::WIDTH);
    let mut acc = [[[_mm256_setzero_ps(); 2]; N]; R];
    let step_bytes = R * 16 * W::WIDTH;
    let mut i = 0;
    while i + 16 <= n {
        if R > 1 {
            // A prefetch is a hint that never faults: any address is fine.
            let ahead = rows[0].as_ptr().wrapping_add(PREFETCH + i / 16 * step_bytes);
            let mut b = 0;
            while b < step_bytes {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(b) as *const i8);
                b += 64;
            }
        }
        for k in 0..2 {
            // In bounds: values `i + 8k .. i + 8k + 8` < n of each row and input (checked above).
            let mut w = [_mm256_setzero_ps(); R];
            for (w, row) in w.iter_mut().zip(&rows) {
                *w = W::widen(row.as_ptr(), i + 8 * k);
            }
            for (t, x) in xs.iter().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i + 8 * k));
                for (a, &w) in acc.iter_mut().zip(&w) {
                    a[t][k] = _mm256_fmadd_ps(w, xv, a[t][k]);
                }
            }
        }
        i += 16;
    }
    let mut s = [[0f32; N]; R];
    for (s, a) in s.iter_mut().zip(&acc) {
        for (s, a) in s.iter_mut().zip(a) {
            *s = hsum(_mm256_add_ps(a[0], a[1]));
        }
    }
    super::add_tails::<W, R, N>(s, &rows, &xs, i)
}

/// [`tile`] of f16 rows, for `many_dots!`.
#[inline(always)]
unsafe fn f16_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    tile::<super::F16Row, R, N>(rows, xs)
}

/// [`tile`] of f32 rows, for `many_dots!`.
#[inline(always)]
unsafe fn f32_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
    tile::<super::F32Row, R, N>(rows, xs)
}

/// `sum(row[i] * x[i])` for a little-endian f32 row.
///
/// # Safety
/// The CPU must support avx2 and fma ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    tile::<super::F32Row, 1, 1>([row], [x])[0][0]
}

/// `sum(row[i] as i8 * x[i])`.
///
/// Widening a byte to f32 and its multiply-add are three operations per lane group, so
/// the sums run in four chains (one FMA's latency is four cycles: two chains leave the
/// loop waiting on it), and each 64 bytes ask for the line `PREFETCH` (8 KB) ahead: the
/// output matrix is read once per decoded token, and the hardware prefetchers alone
/// leave this loop well short of a plain read of the same bytes (BENCHMARKS.md).
///
/// # Safety
/// The CPU must support avx2 and fma ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_i8(row: &[u8], x: &[f32]) -> f32 {
    i8_1([x], row)[0]
}

/// [`dot_i8`] of one row with `N` inputs at once: each 8 bytes widened once, each input in
/// [`dot_i8`]'s four chains and order.
#[inline(always)]
unsafe fn i8_1<const N: usize>(xs: [&[f32]; N], row: &[u8]) -> [f32; N] {
    let n = inputs_len(&xs, row, 1);
    let rp = row.as_ptr();
    let widen = |i: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(rp.add(i) as *const __m128i)));
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    let mut i = 0;
    while i + 64 <= n {
        // A prefetch is a hint that never faults, so the address may lie past the row.
        _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(i + PREFETCH) as *const i8);
        for k in 0..8 {
            let w = widen(i + 8 * k);
            for (a, x) in acc.iter_mut().zip(&xs) {
                a[k % 4] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)), a[k % 4]);
            }
        }
        i += 64;
    }
    while i + 8 <= n {
        let w = widen(i);
        for (a, x) in acc.iter_mut().zip(&xs) {
            a[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), a[0]);
        }
        i += 8;
    }
    let mut s = [0f32; N];
    for ((s, a), x) in s.iter_mut().zip(&acc).zip(&xs) {
        *s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
        for j in i..n {
            *s += f32::from(row[j] as i8) * x[j];
        }
    }
    s
}

/// [`many_dots!`]'s tiles of `R` rows (one after the other) × `N` inputs.
macro_rules! row_by_row {
    ($($name:ident = $one:ident),+) => {$(
        #[inline(always)]
        unsafe fn $name<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
            let mut y = [[0f32; N]; R];
            for (y, row) in y.iter_mut().zip(rows) {
                *y = $one(xs, row);
            }
            y
        }
    )+};
}
row_by_row!(i8_n = i8_1);

block_dots!("avx2,fma,f16c");
many_dots!("avx2,fma,f16c"; dots_f16 = f16_n / 2 x 2, dots_f32 = f32_n / 2 x 2, dots_i8 = i8_n / 1 x 2, dots_q6 = q6_n / 1 x 4, dots_q4 = q4_n / 1 x 4);

/// One q6 (`Q6`) or q4 block row, the portable order's 16 lanes as two vectors of 8: half
/// `h` takes nibble bytes `8h .. 8h + 8` (values `8h ..` masked, `16 + 8h ..` shifted by 4)
/// and, for q6, the 8 top-bit bytes shifted by `2h` and `4 + 2h`. Each of the `N` inputs
/// `xs` takes a block's values, decoded once, into its own two accumulators.
#[inline(always)]
unsafe fn dot_blocks<const Q6: bool, const N: usize>(xs: [&[f32]; N], row: &[u8]) -> [f32; N] {
    let (bb, blocks) = super::q_blocks(row, &xs, Q6);
    let rp = row.as_ptr();
    let zero = _mm256_set1_epi32(if Q6 { 32 } else { 8 });
    let (nibble, three) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(3));
    let top_bits = |t: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(t, three));
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for b in 0..blocks {
        // In bounds: block `b` is bytes `b·bb .. (b+1)·bb` of `row`, and its values
        // `32b .. 32b + 32` of `x` (`q_blocks` checked both). Two blocks are under 64 bytes,
        // so asking every other block asks for every line.
        let blk = rp.add(b * bb);
        if b % 2 == 0 {
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
        }
        let d = _mm256_cvtph_ps(_mm_set1_epi16((blk as *const i16).read_unaligned()));
        let top = if Q6 { _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(18) as *const __m128i)) } else { zero };
        for h in 0..2 {
            let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(2 + 8 * h) as *const __m128i));
            let (mut lo, mut hi) = (_mm256_and_si256(v, nibble), _mm256_srli_epi32::<4>(v));
            if Q6 {
                let (tl, th) = if h == 0 {
                    (top, _mm256_srli_epi32::<4>(top))
                } else {
                    (_mm256_srli_epi32::<2>(top), _mm256_srli_epi32::<6>(top))
                };
                lo = _mm256_or_si256(lo, top_bits(tl));
                hi = _mm256_or_si256(hi, top_bits(th));
            }
            let qa = _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, zero));
            let qb = _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, zero));
            for (acc, x) in acc.iter_mut().zip(&xs) {
                let xa = _mm256_loadu_ps(x.as_ptr().add(32 * b + 8 * h));
                let xb = _mm256_loadu_ps(x.as_ptr().add(32 * b + 16 + 8 * h));
                let p = _mm256_fmadd_ps(qb, xb, _mm256_mul_ps(qa, xa));
                acc[h] = _mm256_fmadd_ps(d, p, acc[h]);
            }
        }
    }
    acc.map(|acc| {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` has room for the 16 values stored.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
        }
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
        // SAFETY: the loads read the 32 bytes of `src`. The conversion needs f16c: this type is used only
        // in this module's kernels, which run only where `available()` (the module's
        // features) holds.
        unsafe {
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast()));
            let hi = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(8).cast()));
            std::mem::transmute::<[__m256; 2], [f32; 16]>([lo, hi])
        }
    }
}

float_ops!("avx2,fma,f16c", score_tile = (4, 1), value_tile = (4, 16));
