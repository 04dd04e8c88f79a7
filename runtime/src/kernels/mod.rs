//! Compute kernels behind one dispatch point, chosen once at load. Nothing here knows of
//! threads or of the model: a kernel takes slices and computes one band of a product, or
//! one task of attention; `crate::matmul` and `crate::attention` cut the work into bands
//! and tasks and run them on the pool.
//!
//! The ternary kernel computes exact integer dot products of int8 activations with
//! packed ternary weights (the `t2` layout of SPEC.md); the float kernels are the dot
//! products of the embedding / output matrix, and the forward pass's float loops, written
//! once ([`float`]: quantization, rescale; [`attend`]: attention over the KV cache) and
//! compiled into each set (see `float_ops!`). [`Kernels::detect`] picks the best
//! set this CPU runs (x86_64: AVX-512 VNNI with GFNI to take the 2-bit codes out of the
//! packed bytes, then without, then AVX2 with AVX-VNNI, then AVX2; aarch64:
//! NEON with `sdot`, then plain NEON; then portable);
//! `TERN_KERNELS=avx512-gfni|avx512|avxvnni|avx2|neon-dotprod|neon|portable` overrides it (for
//! benchmarks and comparisons). Every SIMD kernel is tested against the portable one
//! (`tests/kernels.rs`).

/// The float loops of the forward pass that are written once in [`float`] and [`attend`] as
/// inline functions (plain loops in a fixed order), compiled into a kernel set with that
/// set's target features so the compiler vectorises them at its width. The order of
/// operations does not depend on the width, so every kernel set computes the same bits.
///
/// `$score_tile`: the tile of scores that [`attend::attend_tokens`] keeps in registers,
/// (tokens, key blocks of 16 positions); `$value_tile`: its tile of weighted values,
/// (tokens, dimensions). The kernel set chooses them for its registers; they change no
/// result.
macro_rules! float_ops {
    ($($feature:literal,)? score_tile = ($st:literal, $sb:literal), value_tile = ($vt:literal, $vd:literal)) => {
        /// [`crate::kernels::attend::attend_heads`] for this kernel set, over a KV cache read by `K`.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        $(#[target_feature(enable = $feature)])?
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn attend<K: crate::kernels::attend::KvRead>(
            q: &[f32],
            at: crate::kernels::attend::HeadsAt,
            keys: &[K::Elem],
            values: &[K::Elem],
            scratch: &mut [f32],
            start: usize,
            end: usize,
            parts: &mut [f32],
        ) {
            crate::kernels::attend::attend_heads::<K>(q, at, keys, values, scratch, start, end, parts)
        }

        /// [`crate::kernels::attend::attend_tokens`] for this kernel set, over a KV cache read by `K`.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        $(#[target_feature(enable = $feature)])?
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn attend_tokens<K: crate::kernels::attend::KvRead>(
            q: &[f32],
            at: crate::kernels::attend::HeadsAt,
            keys: &[K::Elem],
            values: &[K::Elem],
            scratch: &mut [f32],
            n0: usize,
            tokens: usize,
            out: &mut [f32],
        ) {
            crate::kernels::attend::attend_tokens::<K, $st, $sb, $vt, $vd>(q, at, keys, values, scratch, n0, tokens, out)
        }

        /// [`crate::kernels::float::quantize_normed`] for this kernel set.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        $(#[target_feature(enable = $feature)])?
        pub unsafe fn quantize_normed(x: &[f32], gain: &[f32], norm_eps: Option<f32>, xq: &mut [i8]) -> (f32, i32) {
            crate::kernels::float::quantize_normed(x, gain, norm_eps, xq)
        }

        /// [`crate::kernels::float::rescale`] for this kernel set.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        $(#[target_feature(enable = $feature)])?
        pub unsafe fn rescale(how: crate::kernels::float::Combine, dst: &mut [f32], acc: &[i32], f: f32) {
            crate::kernels::float::rescale(how, dst, acc, f)
        }
    };
}

/// `dot_q6` and `dot_q4` of an x86 kernel set: its `dot_blocks::<Q6, 1>` (the portable order
/// of [`portable::dot_q6`] at that set's width) compiled with `$feature`; and `q6_n` /
/// `q4_n`, its `dot_blocks` of `N` inputs, for [`many_dots!`].
#[cfg(target_arch = "x86_64")]
macro_rules! block_dots {
    ($feature:literal) => {
        /// [`super::portable::dot_q6`] at this module's width, in the same operations and order.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        #[target_feature(enable = $feature)]
        pub unsafe fn dot_q6(row: &[u8], x: &[f32]) -> f32 {
            dot_blocks::<true, 1>([x], row)[0]
        }

        /// [`super::portable::dot_q4`] at this module's width, in the same operations and order.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`available`]).
        #[target_feature(enable = $feature)]
        pub unsafe fn dot_q4(row: &[u8], x: &[f32]) -> f32 {
            dot_blocks::<false, 1>([x], row)[0]
        }

        /// [`dot_q6`] of `R` rows (one after the other) × `N` inputs, each its own [`dot_q6`]'s bits.
        #[inline(always)]
        unsafe fn q6_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
            let mut y = [[0f32; N]; R];
            for (y, row) in y.iter_mut().zip(rows) {
                *y = dot_blocks::<true, N>(xs, row);
            }
            y
        }

        /// [`dot_q4`] of `R` rows (one after the other) × `N` inputs, each its own [`dot_q4`]'s bits.
        #[inline(always)]
        unsafe fn q4_n<const R: usize, const N: usize>(rows: [&[u8]; R], xs: [&[f32]; N]) -> [[f32; N]; R] {
            let mut y = [[0f32; N]; R];
            for (y, row) in y.iter_mut().zip(rows) {
                *y = dot_blocks::<false, N>(xs, row);
            }
            y
        }
    };
}

/// The multi-input dot products of a kernel set: `dots_f16`, `dots_f32`, `dots_i8`,
/// `dots_q6` and `dots_q4`, each `(rows, row_bytes, xs, out)`: for the `n_rows` weight rows
/// of `rows` (`row_bytes` each) and the `n_in` inputs of equal length that `xs` holds one
/// after the other (`n_in` = `out.len() / n_rows`), `out[t · n_rows + r]` = the set's
/// `dot_*(row_r, x_t)`. Each calls the module's generic `$gen::<R, N>(rows, xs)` (a tile
/// of `R` weight rows × `N` inputs: each row's values converted once for all `N` inputs,
/// each input's values loaded once for all `R` rows, and every (row, input) pair in the
/// lanes, accumulation order and final reduction of the one-input kernel, which is
/// `$gen::<1, 1>`) on tiles of at most `$rows` rows and `$most` inputs (then 2, then 1),
/// so a result's bits depend on neither the tiling nor how many rows and inputs share the call.
macro_rules! many_dots {
    ($feature:literal; $($name:ident = $gen:ident / $rows:literal x $most:literal),+ $(,)?) => {
        $(many_dots!(@one #[target_feature(enable = $feature)] $name $gen $rows $most);)+
    };
    ($($name:ident = $gen:ident / $rows:literal x $most:literal),+ $(,)?) => {
        $(many_dots!(@one $name $gen $rows $most);)+
    };
    (@one $(#[$attr:meta])* $name:ident $gen:ident $rows:literal $most:literal) => {
        #[doc = concat!("`out[t · n_rows + r]` = this set's one-input dot (`", stringify!($gen), "::<1, 1>`) of row `r` of `rows` with input `t` of `xs`, bit for bit: see `many_dots!`.")]
        ///
        /// # Safety
        /// The CPU must support this module's features (`available` where the module has one).
        $(#[$attr])*
        #[allow(unused_unsafe, clippy::int_plus_one)]
        pub unsafe fn $name(rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
            let n_rows = if row_bytes == 0 { 0 } else { rows.len() / row_bytes };
            assert!(n_rows * row_bytes == rows.len() && n_rows > 0, "{} bytes are not whole rows of {row_bytes}", rows.len());
            let n_in = out.len() / n_rows;
            assert!(n_in * n_rows == out.len(), "{} outputs are not {n_rows} rows' worth", out.len());
            if n_in == 0 {
                return;
            }
            let len = xs.len() / n_in;
            assert!(xs.len() == n_in * len, "{} values are not {n_in} inputs of one length", xs.len());
            let x = |t: usize| &xs[t * len..(t + 1) * len];
            let w = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];
            let mut r = 0;
            while r < n_rows {
                // A tile of `$rows` rows while they last, then one row at a time.
                if r + $rows <= n_rows {
                    let ws: [&[u8]; $rows] = core::array::from_fn(|k| w(r + k));
                    many_dots!(@inputs $gen, $rows, $most, ws, x, n_in, n_rows, r, out);
                    r += $rows;
                } else {
                    many_dots!(@inputs $gen, 1, $most, [w(r)], x, n_in, n_rows, r, out);
                    r += 1;
                }
            }
        }
    };
    // Inputs of one tile of rows `ws` (from row `r0`): groups of `$most`, then 2, then 1.
    (@inputs $gen:ident, $r:literal, $most:literal, $ws:expr, $x:ident, $n_in:ident, $n_rows:ident, $r0:ident, $out:ident) => {{
        let ws = $ws;
        let mut t = 0;
        while t + $most <= $n_in {
            let xs: [&[f32]; $most] = core::array::from_fn(|k| $x(t + k));
            // SAFETY: the caller guarantees this module's features.
            let y = unsafe { $gen::<$r, $most>(ws, xs) };
            for (i, y) in y.iter().enumerate() {
                for (k, &y) in y.iter().enumerate() {
                    $out[(t + k) * $n_rows + $r0 + i] = y;
                }
            }
            t += $most;
        }
        while t + 2 <= $n_in {
            // SAFETY: as above.
            let y = unsafe { $gen::<$r, 2>(ws, [$x(t), $x(t + 1)]) };
            for (i, y) in y.iter().enumerate() {
                $out[t * $n_rows + $r0 + i] = y[0];
                $out[(t + 1) * $n_rows + $r0 + i] = y[1];
            }
            t += 2;
        }
        if t < $n_in {
            // SAFETY: as above.
            let y = unsafe { $gen::<$r, 1>(ws, [$x(t)]) };
            for (i, y) in y.iter().enumerate() {
                $out[t * $n_rows + $r0 + i] = y[0];
            }
        }
    }};
}

/// A float encoding of the output / embedding matrix as the dot kernels' tiles read it: its
/// bytes per value, and one value (for a tile's scalar tail). Each x86 module widens 16 or 8
/// of them at once in its own `Widen` trait over these types.
#[cfg(target_arch = "x86_64")]
trait FloatRow {
    const WIDTH: usize;
    fn value(row: &[u8], j: usize) -> f32;
}

/// Little-endian f16 values.
#[cfg(target_arch = "x86_64")]
struct F16Row;
#[cfg(target_arch = "x86_64")]
impl FloatRow for F16Row {
    const WIDTH: usize = 2;
    #[inline(always)]
    fn value(row: &[u8], j: usize) -> f32 {
        half::f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32()
    }
}

/// Little-endian f32 values.
#[cfg(target_arch = "x86_64")]
struct F32Row;
#[cfg(target_arch = "x86_64")]
impl FloatRow for F32Row {
    const WIDTH: usize = 4;
    #[inline(always)]
    fn value(row: &[u8], j: usize) -> f32 {
        f32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]])
    }
}

/// Int8 values (q8 without its row scale).
#[cfg(target_arch = "x86_64")]
struct I8Row;
#[cfg(target_arch = "x86_64")]
impl FloatRow for I8Row {
    const WIDTH: usize = 1;
    #[inline(always)]
    fn value(row: &[u8], j: usize) -> f32 {
        f32::from(row[j] as i8)
    }
}

/// The length every input of a tile shares; panics unless they all have it and every row
/// holds as many values of `width` bytes, so a kernel's pointers stay inside the slices.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tile_len<const R: usize, const N: usize>(rows: &[&[u8]; R], xs: &[&[f32]; N], width: usize) -> usize {
    let n = xs.first().map_or(0, |x| x.len());
    assert!(
        xs.iter().all(|x| x.len() == n) && rows.iter().all(|r| r.len() >= width * n),
        "inputs of one length, rows as long"
    );
    n
}

/// A tile's results: each (row, input) pair's reduced vector sum `s[r][t]`, plus the scalar
/// tail `row[j] · x[j]` for `j` in `from..n`, added one by one in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn add_tails<W: FloatRow, const R: usize, const N: usize>(
    mut s: [[f32; N]; R],
    rows: &[&[u8]; R],
    xs: &[&[f32]; N],
    from: usize,
) -> [[f32; N]; R] {
    for (s, row) in s.iter_mut().zip(rows) {
        for (s, x) in s.iter_mut().zip(xs) {
            for (j, &x) in x.iter().enumerate().skip(from) {
                *s += W::value(row, j) * x;
            }
        }
    }
    s
}

/// A q6 (`q6`) or q4 row's block size and block count; panics unless `row` is whole blocks
/// and each input of `xs` holds 32 values per block, so a kernel's pointers into them stay inside.
#[cfg(target_arch = "x86_64")]
fn q_blocks(row: &[u8], xs: &[&[f32]], q6: bool) -> (usize, usize) {
    use tern_format::block_quant::{block_bytes, BLOCK};
    let bb = block_bytes(if q6 { tern_format::Encoding::Q6 } else { tern_format::Encoding::Q4 });
    let blocks = row.len() / bb;
    assert!(row.len() == blocks * bb && xs.iter().all(|x| x.len() == blocks * BLOCK), "whole blocks");
    (bb, blocks)
}

pub mod attend;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod float;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod portable;

use attend::{F16Kv, F32Kv, HeadsAt};
use float::Combine;

/// How far ahead of its reads a one-token x86 kernel asks for weight bytes (in address
/// order). Decoding streams every weight once per token; without software prefetch the
/// kernel waits on memory for much of its time (the hardware prefetchers alone fall well
/// behind). The AVX-512 kernels ask with the non-temporal hint (NTA): the weights, read
/// once per token, then pass through without pushing the KV cache out of the caches. With
/// AVX2 it measured no faster, so those keep T0. (Figures: BENCHMARKS.md, "Figures that
/// were code comments".)
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 8192;

/// Asks for the cache line holding `p` ahead of its use; does nothing where there is no
/// prefetch instruction. Any address is fine: `p` is never read here.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetch` is part of SSE, which every x86_64 CPU has; it is a hint that
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The shape of one band for a SIMD ternary kernel: `(n_tok, padded, n_rows, blocks)`.
/// Panics unless every pointer a kernel forms from these stays inside the slices: rows
/// are `row_bytes` long (a multiple of 64), each token's activations `padded` = 4 ×
/// row_bytes long, and `out` holds `n_rows × n_tok` values.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn band_shape(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &[i32]) -> (usize, usize, usize, usize) {
    let n_tok = act_sums.len();
    let padded = row_bytes * 4;
    let n_rows = rows.len() / row_bytes;
    assert!(row_bytes.is_multiple_of(64) && rows.len() == n_rows * row_bytes);
    assert!(xq.len() >= n_tok * padded && out.len() >= n_rows * n_tok);
    (n_tok, padded, n_rows, row_bytes / 64)
}

/// A kernel's `sum((w+1)·x)` of one packed row (`blocks` 64-byte blocks) with `T` tokens'
/// activation rows, `padded` apart.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
trait RowTokens {
    /// # Safety
    /// `row` must have `blocks · 64` readable bytes, `x` `(T - 1) · padded + blocks · 256`,
    /// and the CPU must run the implementation's instructions.
    unsafe fn row_tokens<const T: usize>(row: *const u8, x: *const i8, padded: usize, blocks: usize) -> [i32; T];

    /// `row_tokens::<1>` of two consecutive rows (`row_bytes` apart): by default one row
    /// after the other.
    ///
    /// # Safety
    /// As for `row_tokens`, for both rows.
    #[inline(always)]
    unsafe fn rows2_token(w: *const u8, row_bytes: usize, x: *const i8, blocks: usize) -> [i32; 2] {
        [Self::row_tokens::<1>(w, x, 0, blocks)[0], Self::row_tokens::<1>(w.add(row_bytes), x, 0, blocks)[0]]
    }

    /// `row_tokens::<4>` of two consecutive rows (`row_bytes` apart): by default one row
    /// after the other.
    ///
    /// # Safety
    /// As for `row_tokens`, for both rows.
    #[inline(always)]
    unsafe fn rows2_tokens4(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
        padded: usize,
        blocks: usize,
    ) -> [[i32; 4]; 2] {
        [Self::row_tokens::<4>(w, x, padded, blocks), Self::row_tokens::<4>(w.add(row_bytes), x, padded, blocks)]
    }
}

/// [`portable::ternary_gemm`] for a [`RowTokens`] kernel: tokens in groups of four (outer
/// loop, their activations staying in L1) over every row of the band, two rows at a time
/// ([`RowTokens::rows2_tokens4`]; each decoded code vector feeds four tokens); leftover
/// tokens, and one-token decoding, one token at a time over two rows at a time
/// ([`RowTokens::rows2_token`]). A kernel that shares nothing between two rows keeps the
/// trait's defaults, one row after the other.
///
/// # Safety
/// The CPU must run `K`'s instructions. Always inlined, so that it is compiled with the
/// target features of the kernel that calls it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn gemm_by_rows<K: RowTokens>(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
    let (n_tok, padded, n_rows, blocks) = band_shape(rows, row_bytes, xq, act_sums, out);
    let (wp, xp) = (rows.as_ptr(), xq.as_ptr());
    let mut t = 0;
    while t + 4 <= n_tok {
        let mut r = 0;
        while r + 2 <= n_rows {
            let s = K::rows2_tokens4(wp.add(r * row_bytes), row_bytes, xp.add(t * padded), padded, blocks);
            for (i, s) in s.iter().enumerate() {
                for j in 0..4 {
                    out[(t + j) * n_rows + r + i] = s[j] - act_sums[t + j];
                }
            }
            r += 2;
        }
        if r < n_rows {
            let s = K::row_tokens::<4>(wp.add(r * row_bytes), xp.add(t * padded), padded, blocks);
            for j in 0..4 {
                out[(t + j) * n_rows + r] = s[j] - act_sums[t + j];
            }
        }
        t += 4;
    }
    while t < n_tok {
        let x = xp.add(t * padded);
        let mut r = 0;
        while r + 2 <= n_rows {
            let s = K::rows2_token(wp.add(r * row_bytes), row_bytes, x, blocks);
            out[t * n_rows + r] = s[0] - act_sums[t];
            out[t * n_rows + r + 1] = s[1] - act_sums[t];
            r += 2;
        }
        if r < n_rows {
            out[t * n_rows + r] = K::row_tokens::<1>(wp.add(r * row_bytes), x, padded, blocks)[0] - act_sums[t];
        }
        t += 1;
    }
}

type TernaryGemmFn = unsafe fn(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]);
type DotFn = unsafe fn(row: &[u8], x: &[f32]) -> f32;
/// `(rows, row_bytes, xs, out)`: the dots of several rows with several inputs at once (see `many_dots!`).
type DotsFn = unsafe fn(rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]);
/// `(q, at, keys, values, scratch, start, end, parts)`: see [`attend::attend_heads`].
type AttendFn<E> = unsafe fn(&[f32], HeadsAt, &[E], &[E], &mut [f32], usize, usize, &mut [f32]);
/// `(q, at, keys, values, scratch, n0, tokens, out)`: see [`attend::attend_tokens`].
type AttendTokensFn<E> = unsafe fn(&[f32], HeadsAt, &[E], &[E], &mut [f32], usize, usize, &mut [f32]);
type QuantizeFn = unsafe fn(x: &[f32], gain: &[f32], norm_eps: Option<f32>, xq: &mut [i8]) -> (f32, i32);
type RescaleFn = unsafe fn(how: Combine, dst: &mut [f32], acc: &[i32], f: f32);
type ReadFn = unsafe fn(&[u8]) -> u64;

/// An element type of the KV cache: f32, or f16 as its bits (`u16`).
pub trait CacheElem: attend::KvElem + private::Sealed {
    /// The attention kernels of `kernels` for a cache of this type.
    fn attend_fn(kernels: &Kernels) -> AttendFn<Self>;
    fn attend_tokens_fn(kernels: &Kernels) -> AttendTokensFn<Self>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u16 {}
}

impl CacheElem for f32 {
    fn attend_fn(kernels: &Kernels) -> AttendFn<f32> {
        kernels.attend
    }
    fn attend_tokens_fn(kernels: &Kernels) -> AttendTokensFn<f32> {
        kernels.attend_tokens
    }
}

impl CacheElem for u16 {
    fn attend_fn(kernels: &Kernels) -> AttendFn<u16> {
        kernels.attend_f16
    }
    fn attend_tokens_fn(kernels: &Kernels) -> AttendTokensFn<u16> {
        kernels.attend_tokens_f16
    }
}

/// The kernel set of module `$m` (its ternary GEMM, float dots, the `float_ops!` it
/// compiles, its read probe), its f16 cache read by `$f16`. The one list of a set's
/// kernels: variants (GFNI, AVX-VNNI, NEON) replace fields of one of these.
macro_rules! kernel_set {
    ($name:literal, $m:ident, $f16:ty) => {
        Kernels {
            name: $name,
            ternary_gemm: $m::ternary_gemm,
            dot_f16: $m::dot_f16,
            dot_f32: $m::dot_f32,
            dot_i8: $m::dot_i8,
            dot_q6: $m::dot_q6,
            dot_q4: $m::dot_q4,
            dots_f16: $m::dots_f16,
            dots_f32: $m::dots_f32,
            dots_i8: $m::dots_i8,
            dots_q6: $m::dots_q6,
            dots_q4: $m::dots_q4,
            attend: $m::attend::<F32Kv>,
            attend_f16: $m::attend::<$f16>,
            attend_tokens: $m::attend_tokens::<F32Kv>,
            attend_tokens_f16: $m::attend_tokens::<$f16>,
            quantize_normed: $m::quantize_normed,
            rescale: $m::rescale,
            read_sum: $m::read_sum,
        }
    };
}

/// A set of kernels this CPU can run. The fields are private and every constructor checks
/// the CPU features its kernels need, so holding a `Kernels` proves they are safe to call.
#[derive(Clone, Copy)]
pub struct Kernels {
    name: &'static str,
    ternary_gemm: TernaryGemmFn,
    dot_f16: DotFn,
    dot_f32: DotFn,
    dot_i8: DotFn,
    dot_q6: DotFn,
    dot_q4: DotFn,
    dots_f16: DotsFn,
    dots_f32: DotsFn,
    dots_i8: DotsFn,
    dots_q6: DotsFn,
    dots_q4: DotsFn,
    attend: AttendFn<f32>,
    attend_f16: AttendFn<u16>,
    attend_tokens: AttendTokensFn<f32>,
    attend_tokens_f16: AttendTokensFn<u16>,
    quantize_normed: QuantizeFn,
    rescale: RescaleFn,
    read_sum: ReadFn,
}

impl Kernels {
    /// The best kernels for this CPU, or those named by `TERN_KERNELS` if it can run them.
    pub fn detect() -> Self {
        let all = Self::available();
        if let Ok(want) = std::env::var("TERN_KERNELS") {
            if let Some(set) = all.iter().find(|set| set.name == want) {
                return *set;
            }
        }
        all[0]
    }

    /// Every kernel set this CPU runs, best first; the portable one is always last.
    pub fn available() -> Vec<Self> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                let avx512 = kernel_set!("avx512", avx512, avx512::F16Lanes);
                if avx512::gfni_available() {
                    v.push(Kernels { name: "avx512-gfni", ternary_gemm: avx512::ternary_gemm_gfni, ..avx512 });
                }
                v.push(avx512);
            }
            if avx2::available() {
                let avx2 = kernel_set!("avx2", avx2, avx2::F16Lanes);
                if avx2::vnni_available() {
                    v.push(Kernels { name: "avxvnni", ternary_gemm: avx2::ternary_gemm_vnni, ..avx2 });
                }
                v.push(avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if neon::dotprod_available() {
                v.push(Kernels { name: "neon-dotprod", ternary_gemm: neon::ternary_gemm_dotprod, ..Self::portable() });
            }
            v.push(Kernels { name: "neon", ternary_gemm: neon::ternary_gemm, ..Self::portable() });
        }
        v.push(Self::portable());
        v
    }

    pub fn portable() -> Self {
        kernel_set!("portable", portable, F16Kv)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One band of rows: see [`portable::ternary_gemm`].
    pub fn ternary_band(&self, rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]) {
        // SAFETY: `self` was built by a constructor that checked this CPU's features; the
        // kernels check their slice lengths themselves.
        unsafe { (self.ternary_gemm)(rows, row_bytes, xq, act_sums, out) }
    }

    /// Dot product of a little-endian f16 row with `x`.
    pub fn dot_f16(&self, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dot_f16)(row, x) }
    }

    /// Dot product of a little-endian f32 row with `x`.
    pub fn dot_f32(&self, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dot_f32)(row, x) }
    }

    /// Partial attention results of one or more query heads over one span of positions of
    /// a KV cache of f32 or f16 (bits): see [`attend::attend_heads`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend<E: CacheElem>(
        &self,
        q: &[f32],
        at: HeadsAt,
        keys: &[E],
        values: &[E],
        scratch: &mut [f32],
        span: std::ops::Range<usize>,
        parts: &mut [f32],
    ) {
        // SAFETY: as in `ternary_band`; `attend_heads` indexes with checked slices.
        unsafe { E::attend_fn(self)(q, at, keys, values, scratch, span.start, span.end, parts) }
    }

    /// Attention of one query head for consecutive prompt tokens: see
    /// [`crate::kernels::attend::attend_tokens`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend_tokens<E: CacheElem>(
        &self,
        q: &[f32],
        at: HeadsAt,
        keys: &[E],
        values: &[E],
        scratch: &mut [f32],
        n0: usize,
        tokens: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `ternary_band`; `attend_tokens` indexes with checked slices.
        unsafe { E::attend_tokens_fn(self)(q, at, keys, values, scratch, n0, tokens, out) }
    }

    /// See [`float::quantize_normed`].
    pub fn quantize_normed(&self, x: &[f32], gain: &[f32], norm_eps: Option<f32>, xq: &mut [i8]) -> (f32, i32) {
        // SAFETY: as in `ternary_band`; the function indexes with checked slices.
        unsafe { (self.quantize_normed)(x, gain, norm_eps, xq) }
    }

    /// See [`float::rescale`].
    pub fn rescale(&self, how: Combine, dst: &mut [f32], acc: &[i32], f: f32) {
        // SAFETY: as in `ternary_band`; the function indexes with checked slices.
        unsafe { (self.rescale)(how, dst, acc, f) }
    }

    /// [`portable::read_sum`]: a streaming read of `bytes` at this set's width.
    pub fn read_sum(&self, bytes: &[u8]) -> u64 {
        // SAFETY: as in `ternary_band`; the kernels read only inside `bytes`.
        unsafe { (self.read_sum)(bytes) }
    }

    /// Dot product of an int8 row (as bytes) with `x`.
    pub fn dot_i8(&self, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dot_i8)(row, x) }
    }

    /// Dot product of a q6 row (whole blocks) with `x` (32 values per block): see
    /// [`portable::dot_q6`], whose bits every kernel set computes.
    pub fn dot_q6(&self, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dot_q6)(row, x) }
    }

    /// [`Kernels::dot_q6`] for a q4 row.
    pub fn dot_q4(&self, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dot_q4)(row, x) }
    }

    /// `out[t · n_rows + r]` = [`Kernels::dot_f16`]`(row_r, x_t)`, bit for bit, for the
    /// `n_rows` rows of `rows` (`row_bytes` each) and the `out.len() / n_rows` inputs `x_t` of
    /// equal length that `xs` holds one after the other: each row's halves are converted
    /// once for several inputs, each input's values loaded once for several rows. Panics
    /// unless `rows` and `xs` split evenly.
    pub fn dots_f16(&self, rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dots_f16)(rows, row_bytes, xs, out) }
    }

    /// [`Kernels::dots_f16`] for [`Kernels::dot_f32`].
    pub fn dots_f32(&self, rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dots_f32)(rows, row_bytes, xs, out) }
    }

    /// [`Kernels::dots_f16`] for [`Kernels::dot_i8`].
    pub fn dots_i8(&self, rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dots_i8)(rows, row_bytes, xs, out) }
    }

    /// [`Kernels::dots_f16`] for [`Kernels::dot_q6`].
    pub fn dots_q6(&self, rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dots_q6)(rows, row_bytes, xs, out) }
    }

    /// [`Kernels::dots_f16`] for [`Kernels::dot_q4`].
    pub fn dots_q4(&self, rows: &[u8], row_bytes: usize, xs: &[f32], out: &mut [f32]) {
        // SAFETY: as in `ternary_band`.
        unsafe { (self.dots_q4)(rows, row_bytes, xs, out) }
    }
}
