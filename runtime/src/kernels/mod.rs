//! Compute kernels behind one dispatch point, chosen once at load.
//!
//! The ternary kernel computes exact integer dot products of int8 activations with
//! packed ternary weights (the `t2` layout of SPEC.md). Only the portable kernel
//! exists today; SIMD kernels slot in here and are tested against it.

pub mod portable;

use rayon::prelude::*;

/// Signature of a ternary GEMM band kernel (see [`portable::ternary_gemm`]).
pub type TernaryGemm = fn(rows: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], out: &mut [i32]);

/// The kernels this CPU runs.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub name: &'static str,
    pub ternary_gemm: TernaryGemm,
}

impl Kernels {
    /// The best kernels for this CPU.
    pub fn detect() -> Self {
        Self::portable()
    }

    pub fn portable() -> Self {
        Kernels { name: "portable", ternary_gemm: portable::ternary_gemm }
    }
}

/// Rows per parallel task: enough work to amortise scheduling.
fn band_rows(row_bytes: usize, n_tok: usize) -> usize {
    let work_per_row = row_bytes * n_tok.max(1);
    (16 * 1024 / work_per_row.max(1)).clamp(1, 256)
}

/// `acc[r * n_tok + t]` = exact `sum_k W[r, k] * xq[t, k]` for all rows, in parallel bands.
pub fn ternary_gemm(k: &Kernels, packed: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], acc: &mut [i32]) {
    let n_tok = act_sums.len();
    let band = band_rows(row_bytes, n_tok);
    packed
        .par_chunks(band * row_bytes)
        .zip(acc.par_chunks_mut(band * n_tok))
        .for_each(|(rows, out)| (k.ternary_gemm)(rows, row_bytes, xq, act_sums, out));
}
