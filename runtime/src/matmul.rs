//! `y = W·x`: every matrix product of the forward pass, cut into bands for the pool.
//!
//! The model asks for products; this layer decides how they run. A BitLinear product
//! ([`bitlinear`], [`bitlinear_gated`]) takes the rows of [`Input`] (int8 activations, one
//! row per token, quantized by [`Input::quantize`]) through one or more packed ternary
//! matrices that share them, and combines each output row into its destination as a
//! [`Combine`] says (store, residual add, `act(gate)·up`). The float output projection is
//! [`FloatMatrix::matmul`]: every row of a step at once, each matrix row read once. Here,
//! and only here, a matrix's rows are cut into bands (`band_rows`) and the bands handed to
//! the pool; the kernels compute one band and know nothing of threads.
//!
//! **Rows are rows.** An [`Input`] row is one token's activations and nothing else: no
//! position, no sequence. A prompt chunk is `n` rows of one sequence; a decoding step of a
//! server that batches requests is `n` rows, one per sequence, and goes through the very
//! same call (what is per sequence, the KV cache and positions, lives in
//! `crate::attention`). One row takes the one-token path ([`ternary_gemv`]: each band
//! rescales what it computed, prefetching far ahead); a few rows (a decoding step of several
//! sequences, up to `STREAM_TOKENS`) the blocked GEMM in the same bands, each band
//! rescaling its own products; more rows (a prompt chunk) the blocked GEMM
//! ([`ternary_gemms`]: rows in groups of four over each band of weights), then one rescale
//! task per row. All give the same bits for a row, whichever path it took.

use crate::kernels::{prefetch, Kernels};
use tern_format::ternary::{padded_cols, row_bytes};
use tern_format::{block_quant, Encoding, ScaleConvention, Shape, TensorInfo};

pub use crate::kernels::float::Combine;

/// A packed ternary matrix in the file (ranges into the mapped bytes).
#[derive(Debug, Clone, Copy)]
pub struct Ternary {
    offset: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The multiplier of the integer products (`y = dot · scale / s_x`): `max(mean|W|, 1e-5)`
    /// for master weights (`W ≈ scale · Wq`), a pre-packed checkpoint's `weight_scale`, or its
    /// reciprocal where transformers' BitLinear divides by it.
    scale: f32,
    /// Where its bias (f32 per row, added after the scale; SPEC.md §8a) starts in the file.
    bias: Option<usize>,
}

impl Ternary {
    /// The matrix a tensor-table entry describes (which the loader checked is a matrix
    /// inside the file). The stored scale becomes the multiplier here, once, by the file's
    /// scale convention.
    pub fn new(info: &TensorInfo, convention: ScaleConvention) -> Self {
        let Shape::Matrix { rows, cols } = info.shape else { unreachable!("checked a matrix") };
        Ternary {
            offset: info.offset as usize,
            rows: rows as usize,
            cols: cols as usize,
            row_bytes: row_bytes(cols as usize),
            scale: convention.multiplier(info.scale),
            bias: None,
        }
    }

    /// The same matrix with the bias `info` (an f32 vector of one value per row, which
    /// the loader checked).
    pub fn with_bias(self, info: &TensorInfo) -> Self {
        debug_assert!(info.encoding == Encoding::F32 && info.shape == Shape::Vector(self.rows as u64));
        Ternary { bias: Some(info.offset as usize), ..self }
    }

    /// The bias bytes of rows `r0..r0 + n`, if it has a bias.
    fn bias<'f>(&self, file: &'f [u8], r0: usize, n: usize) -> Option<&'f [u8]> {
        self.bias.map(|b| &file[b + 4 * r0..b + 4 * (r0 + n)])
    }

    /// Its packed rows in the file's bytes.
    fn packed<'f>(&self, file: &'f [u8]) -> &'f [u8] {
        &file[self.offset..self.offset + self.rows * self.row_bytes]
    }
}

/// The int8 rows a BitLinear product reads, and the scratch of its integer products:
/// allocated once for up to `max_rows` rows.
pub struct Input {
    /// Rows held (by the last [`Input::quantize`]) and their width.
    rows: usize,
    cols: usize,
    /// Row `t`'s activations at `xq[t · padded_cols(cols)..]`, zero-padded to whole blocks.
    xq: Vec<i8>,
    /// Per row: `s_x` (`xq ≈ x · s_x`) and the sum of its int8 values.
    s_x: Vec<f32>,
    act_sum: Vec<i32>,
    /// `(s_x, act_sum)` per row as the parallel quantization writes them.
    quant: Vec<(f32, i32)>,
    /// The integer products of a several-row product, band by band.
    acc: Vec<i32>,
}

impl Input {
    /// Room for `max_rows` rows of up to `widest` values, and products of up to
    /// `products` output rows (summed over the matrices of one call).
    pub fn new(max_rows: usize, widest: usize, products: usize) -> Self {
        Input {
            rows: 0,
            cols: 0,
            xq: vec![0; max_rows * padded_cols(widest)],
            s_x: vec![0.0; max_rows],
            act_sum: vec![0; max_rows],
            quant: vec![(0.0, 0); max_rows],
            acc: vec![0; max_rows * products],
        }
    }

    /// The first `n` rows (each `cols` wide) of `src`, RMS-normalised with `gain` when
    /// `norm_eps` is given (else as they are, `gain` being ones), quantized: one parallel
    /// task per row.
    pub fn quantize(
        &mut self,
        kernels: &Kernels,
        src: &[f32],
        n: usize,
        cols: usize,
        gain: &[f32],
        norm_eps: Option<f32>,
    ) {
        let pc = padded_cols(cols);
        crate::pool::for_each_chunk_mut2(n, &mut self.xq, pc, &mut self.quant, 1, &|t, xq, quant| {
            quant[0] = kernels.quantize_normed(&src[t * cols..(t + 1) * cols], gain, norm_eps, xq);
        });
        for (t, &(s, sum)) in self.quant[..n].iter().enumerate() {
            self.s_x[t] = s;
            self.act_sum[t] = sum;
        }
        (self.rows, self.cols) = (n, cols);
    }
}

/// BitLinear of the rows in `x` through one or more matrices that share them (q/k/v: their
/// products in one parallel region): the exact integer products, then per row one rescale
/// `y = acc · scale / s_x`, combined into `dsts[i]` (row `t` at `t · rows_i`) as `how[i]`
/// says. Matrices are rescaled in order.
#[track_caller]
pub fn bitlinear<const N: usize>(
    kernels: &Kernels,
    file: &[u8],
    ws: [&Ternary; N],
    x: &mut Input,
    dsts: [&mut [f32]; N],
    how: [Combine; N],
) {
    let (cols, row_bytes, n) = (ws[0].cols, ws[0].row_bytes, x.rows);
    debug_assert!(ws.iter().all(|w| w.cols == cols) && x.cols == cols);
    let packed = ws.map(|w| w.packed(file));
    if n == 1 && ws.iter().all(|w| w.bias.is_none()) {
        // Each band rescales its own rows as it computes them (the same operations,
        // without a serial pass afterwards).
        let f = ws.map(|w| w.scale / x.s_x[0]);
        let xq = &x.xq[..padded_cols(cols)];
        return ternary_gemv(kernels, packed, row_bytes, xq, x.act_sum[0], dsts, how, f);
    }
    if n <= STREAM_TOKENS && ws.iter().all(|w| w.bias.is_none()) {
        let xq = &x.xq[..n * padded_cols(cols)];
        for ((w, dst), how) in ws.into_iter().zip(dsts).zip(how) {
            let f = row_factors(w, &x.s_x[..n]);
            ternary_rows_rescaled(kernels, [w.packed(file)], row_bytes, xq, &x.act_sum[..n], dst, [how], [&f[..n]]);
        }
        return;
    }
    let accs = products(&mut x.acc, ws.map(|w| w.rows * n));
    ternary_gemms(kernels, packed, row_bytes, &x.xq[..n * padded_cols(cols)], &x.act_sum[..n], accs);
    let mut at = 0;
    for ((w, dst), how) in ws.into_iter().zip(dsts).zip(how) {
        rescale(kernels, file, x, w, dst, how, at);
        at += w.rows * n;
    }
}

/// BitLinear of the rows in `x` through a gated pair: `dst = act(gate · x) · (up · x)`,
/// `act` being [`Combine::GateSilu`] or [`Combine::GateReluSquared`] (the MLP's product,
/// formed in `dst` as a store of the gate followed by `act`).
#[track_caller]
pub fn bitlinear_gated(
    kernels: &Kernels,
    file: &[u8],
    gate: &Ternary,
    up: &Ternary,
    x: &mut Input,
    dst: &mut [f32],
    act: Combine,
) {
    let (cols, row_bytes, n) = (gate.cols, gate.row_bytes, x.rows);
    debug_assert!(up.cols == cols && x.cols == cols);
    let (pg, pu) = (gate.packed(file), up.packed(file));
    if n == 1 && gate.bias.is_none() && up.bias.is_none() {
        let f = [gate.scale / x.s_x[0], up.scale / x.s_x[0]];
        let xq = &x.xq[..padded_cols(cols)];
        return ternary_gemv_gated(kernels, pg, pu, row_bytes, xq, x.act_sum[0], dst, act, f);
    }
    if n <= STREAM_TOKENS && gate.bias.is_none() && up.bias.is_none() {
        let f = [gate, up].map(|w| row_factors(w, &x.s_x[..n]));
        let xq = &x.xq[..n * padded_cols(cols)];
        let how = [Combine::Store, act];
        return ternary_rows_rescaled(
            kernels,
            [pg, pu],
            row_bytes,
            xq,
            &x.act_sum[..n],
            dst,
            how,
            [&f[0][..n], &f[1][..n]],
        );
    }
    let accs = products(&mut x.acc, [gate.rows * n, up.rows * n]);
    ternary_gemms(kernels, [pg, pu], row_bytes, &x.xq[..n * padded_cols(cols)], &x.act_sum[..n], accs);
    rescale(kernels, file, x, gate, dst, Combine::Store, 0);
    rescale(kernels, file, x, up, dst, act, gate.rows * n);
}

/// Consecutive pieces of `acc` of the given lengths.
fn products<const N: usize>(acc: &mut [i32], lens: [usize; N]) -> [&mut [i32]; N] {
    let mut rest = acc;
    lens.map(|len| {
        let (acc, r) = std::mem::take(&mut rest).split_at_mut(len);
        rest = r;
        acc
    })
}

/// The rescale of one matrix whose products are in `x.acc[at..]`, one task per row.
#[track_caller]
fn rescale(kernels: &Kernels, file: &[u8], x: &Input, w: &Ternary, dst: &mut [f32], how: Combine, at: usize) {
    let n = x.rows;
    let (acc, s_x) = (&x.acc[at..at + w.rows * n], &x.s_x[..n]);
    let rescale_row = |t: usize, row: &mut [f32]| {
        let f = w.scale / s_x[t];
        let mut r = 0;
        for part in token_outputs(acc, w.row_bytes, w.rows, n, t) {
            let out = &mut row[r..r + part.len()];
            match w.bias(file, r, part.len()) {
                None => kernels.rescale(how, out, part, f),
                Some(bias) => rescale_biased(how, out, part, f, bias),
            }
            r += part.len();
        }
    };
    crate::pool::for_each_chunk_mut(&mut dst[..n * w.rows], w.rows, &rescale_row);
}

/// [`crate::kernels::float::rescale`] with a bias: `y = acc · f + b` (the bias after the
/// scale, SPEC.md §8a; `bias` holds one little-endian f32 per row), combined into `dst` as
/// `how` says. A plain loop: only models with biases take it, and it is O(rows).
fn rescale_biased(how: Combine, dst: &mut [f32], acc: &[i32], f: f32, bias: &[u8]) {
    let ys =
        acc.iter().zip(bias.chunks_exact(4)).map(|(&a, b)| a as f32 * f + f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    for (d, y) in dst.iter_mut().zip(ys) {
        *d = match how {
            Combine::Store => y,
            Combine::Add => *d + y,
            Combine::GateSilu => crate::kernels::float::silu(*d) * y,
            Combine::GateReluSquared => d.max(0.0) * d.max(0.0) * y,
        };
    }
}

/// Up to this many rows, a product's bands are cut as for one token: their weights stream
/// from memory once (the kernels' prefetch running ahead), the kernel's second group of
/// four rows finding them in L2.
const STREAM_TOKENS: usize = 8;

/// Rows per parallel band of a matrix of `rows` rows. Prompt chunks (more than
/// [`STREAM_TOKENS`] rows):
/// about 32 KB of packed weights, which stay in L1/L2 while every token of the chunk
/// passes over them. Fewer rows (one token, a decoding step of a few sequences): up to 128 KB, so a band's stream is long next to its
/// prefetch distance, but at least 16 bands per matrix, so that the last band to finish
/// keeps the other threads waiting only briefly. Bands this size still balance when
/// another process takes a core.
fn band_rows(row_bytes: usize, n_tok: usize, rows: usize) -> usize {
    let bytes = if n_tok > STREAM_TOKENS { 32 * 1024 } else { (rows * row_bytes / 16).clamp(32 * 1024, 128 * 1024) };
    (bytes / row_bytes.max(1)).max(1)
}

/// Exact `sum_k W[r, k] * xq[t, k]` for every row `r` and token `t`, in parallel bands.
///
/// `acc` holds the bands one after another (rows `b·band..`, `band` from [`band_rows`]),
/// each token-major: within band `b` of `rows_b` rows, token `t`'s outputs are
/// `rows_b` consecutive values. [`token_outputs`] walks one token's outputs in row order.
#[track_caller]
pub fn ternary_gemm(kernels: &Kernels, packed: &[u8], row_bytes: usize, xq: &[i8], act_sums: &[i32], acc: &mut [i32]) {
    ternary_gemms(kernels, [packed], row_bytes, xq, act_sums, [acc]);
}

/// [`ternary_gemm`] of several matrices with the same input (q/k/v, gate/up) in one
/// parallel region; `accs[i]` receives matrix `i`'s outputs.
#[track_caller]
pub fn ternary_gemms<const N: usize>(
    kernels: &Kernels,
    packed: [&[u8]; N],
    row_bytes: usize,
    xq: &[i8],
    act_sums: &[i32],
    accs: [&mut [i32]; N],
) {
    let n_tok = act_sums.len();
    let rows = packed.map(|p| p.len() / row_bytes);
    let bands = rows.map(|r| band_rows(row_bytes, n_tok, r));
    let accs = prefixes(accs, rows.map(|r| r * n_tok));
    crate::pool::for_each_chunk_mut_n(accs, bands.map(|b| b * n_tok), &|i, b, out| {
        let r0 = b * bands[i];
        let r1 = r0 + out.len() / n_tok;
        kernels.ternary_band(&packed[i][r0 * row_bytes..r1 * row_bytes], row_bytes, xq, act_sums, out);
    });
}

/// The first `lens[i]` elements of each slice `s[i]`.
fn prefixes<T, const N: usize>(s: [&mut [T]; N], lens: [usize; N]) -> [&mut [T]; N] {
    let mut lens = lens.into_iter();
    s.map(|s| &mut s[..lens.next().expect("one length per slice")])
}

/// Rows a one-token band computes at a time into a stack buffer before rescaling them.
const GEMV_ROWS: usize = 256;

/// One token through one or more matrices with the same input (q/k/v): matrix `i`'s
/// products `acc` become `dsts[i] ⊕= acc · f[i]` as `how[i]` says ([`crate::kernels::float::rescale`]),
/// each band rescaled by the thread that computed it, so no serial pass follows.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn ternary_gemv<const N: usize>(
    kernels: &Kernels,
    packed: [&[u8]; N],
    row_bytes: usize,
    xq: &[i8],
    act_sum: i32,
    dsts: [&mut [f32]; N],
    how: [Combine; N],
    f: [f32; N],
) {
    let rows = packed.map(|p| p.len() / row_bytes);
    let bands = rows.map(|r| band_rows(row_bytes, 1, r));
    let dsts = prefixes(dsts, rows);
    crate::pool::for_each_chunk_mut_n(dsts, bands, &|i, b, out| {
        let mut acc = [0i32; GEMV_ROWS];
        for (c, out) in out.chunks_mut(GEMV_ROWS).enumerate() {
            let r0 = b * bands[i] + c * GEMV_ROWS;
            let acc = &mut acc[..out.len()];
            kernels.ternary_band(
                &packed[i][r0 * row_bytes..(r0 + out.len()) * row_bytes],
                row_bytes,
                xq,
                &[act_sum],
                acc,
            );
            kernels.rescale(how[i], out, acc, f[i]);
        }
    });
}

/// Each row's rescale factor `scale / s_x` for matrix `w` (up to [`STREAM_TOKENS`] rows).
fn row_factors(w: &Ternary, s_x: &[f32]) -> [f32; STREAM_TOKENS] {
    let mut f = [0.0; STREAM_TOKENS];
    for (f, s) in f.iter_mut().zip(s_x) {
        *f = w.scale / s;
    }
    f
}

/// Products of up to this many values (rows × tokens) a band of
/// [`ternary_rows_rescaled`] holds on its stack at a time.
const BAND_ACC: usize = 4096;

/// A few rows (at most [`STREAM_TOKENS`], each `cols` wide at `xq`) through the matrices
/// `packed` (equal shapes; one, or a gated pair) in parallel bands, each band rescaling
/// what it computed into `dst` (row `t` at `t · rows`), matrix by matrix: `dst ⊕= acc ·
/// f[i][t]` as `how[i]` says. One parallel region, with no rescale pass afterwards: the
/// same operations, in the same order per value, as [`ternary_gemms`] followed by
/// [`rescale`].
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn ternary_rows_rescaled<const N: usize>(
    kernels: &Kernels,
    packed: [&[u8]; N],
    row_bytes: usize,
    xq: &[i8],
    act_sums: &[i32],
    dst: &mut [f32],
    how: [Combine; N],
    f: [&[f32]; N],
) {
    let (n, rows) = (act_sums.len(), packed[0].len() / row_bytes);
    let band = band_rows(row_bytes, n, rows);
    let chunk = (BAND_ACC / n).min(band);
    crate::pool::for_each_column_mut(&mut dst[..n * rows], band, n, n, &|b, _, outs| {
        let mut acc = [0i32; BAND_ACC];
        let (r0, r1) = (b * band, ((b + 1) * band).min(rows));
        for c0 in (r0..r1).step_by(chunk) {
            let c1 = (c0 + chunk).min(r1);
            let acc = &mut acc[..(c1 - c0) * n];
            for i in 0..N {
                kernels.ternary_band(&packed[i][c0 * row_bytes..c1 * row_bytes], row_bytes, xq, act_sums, acc);
                for (t, acc) in acc.chunks_exact(c1 - c0).enumerate() {
                    kernels.rescale(how[i], &mut outs.row(t)[c0 - r0..c1 - r0], acc, f[i][t]);
                }
            }
        }
    });
}

/// Bytes of a band's up rows asked for before its gate rows run.
const UP_AHEAD: usize = 8192;

/// One token through a gated pair (gate, up): `dst = act(gate · f_gate) · (up · f_up)`,
/// `act` being `GateSilu` or `GateReluSquared`; each band computes both matrices' rows
/// and combines them, in the same operations as a store of the gate followed by `act`.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn ternary_gemv_gated(
    kernels: &Kernels,
    gate: &[u8],
    up: &[u8],
    row_bytes: usize,
    xq: &[i8],
    act_sum: i32,
    dst: &mut [f32],
    act: Combine,
    f: [f32; 2],
) {
    let rows = gate.len() / row_bytes;
    let band = band_rows(row_bytes, 1, rows);
    crate::pool::for_each_chunk_mut(&mut dst[..rows], band, &|b, out| {
        // The up rows follow the gate rows; the kernel's prefetch runs ahead of the gate
        // rows only, so ask for the first lines of the up rows now.
        let up_rows = &up[b * band * row_bytes..(b * band + out.len()) * row_bytes];
        for line in up_rows.chunks(64).take(UP_AHEAD / 64) {
            prefetch(line.as_ptr());
        }
        let mut acc = [0i32; GEMV_ROWS];
        for (c, out) in out.chunks_mut(GEMV_ROWS).enumerate() {
            let (r0, r1) = (b * band + c * GEMV_ROWS, b * band + c * GEMV_ROWS + out.len());
            let acc = &mut acc[..out.len()];
            kernels.ternary_band(&gate[r0 * row_bytes..r1 * row_bytes], row_bytes, xq, &[act_sum], acc);
            kernels.rescale(Combine::Store, out, acc, f[0]);
            kernels.ternary_band(&up[r0 * row_bytes..r1 * row_bytes], row_bytes, xq, &[act_sum], acc);
            kernels.rescale(act, out, acc, f[1]);
        }
    });
}

/// Token `t`'s outputs of [`ternary_gemm`] over `rows` rows and `n_tok` tokens, in row
/// order, as one contiguous piece per band.
pub fn token_outputs(
    acc: &[i32],
    row_bytes: usize,
    rows: usize,
    n_tok: usize,
    t: usize,
) -> impl Iterator<Item = &[i32]> {
    let band = band_rows(row_bytes, n_tok, rows);
    (0..rows.div_ceil(band)).map(move |b| {
        let (r0, r1) = (b * band, ((b + 1) * band).min(rows));
        let (base, width) = (r0 * n_tok, r1 - r0);
        &acc[base + t * width..base + (t + 1) * width]
    })
}

/// A float matrix in the file (f32, f16, q8: int8 with a scale per row, or q6/q4: blocks of
/// 32 values with an f16 scale each): the embedding or the output projection.
#[derive(Debug, Clone, Copy)]
pub struct FloatMatrix {
    offset: usize,
    rows: usize,
    cols: usize,
    encoding: Encoding,
}

/// Rows per parallel band of [`FloatMatrix::matmul`].
const FLOAT_BAND: usize = 64;

/// Input rows [`FloatMatrix::matmul`] hands one multi-input dot kernel call at once (the
/// kernel takes them in groups of its own); any count gives the same bits.
const DOTS_AT_ONCE: usize = 8;

impl FloatMatrix {
    /// The matrix a tensor-table entry describes (which the loader checked is a matrix
    /// inside the file).
    pub fn new(info: &TensorInfo) -> Self {
        let Shape::Matrix { rows, cols } = info.shape else { unreachable!("checked a matrix") };
        FloatMatrix { offset: info.offset as usize, rows: rows as usize, cols: cols as usize, encoding: info.encoding }
    }

    /// Bytes of one row's values (q8: without its scale; q6/q4: its blocks, scales included).
    fn row_bytes(&self) -> usize {
        match self.encoding {
            Encoding::F16 => 2 * self.cols,
            Encoding::Q8 => self.cols,
            Encoding::Q6 | Encoding::Q4 => block_quant::row_bytes(self.encoding, self.cols),
            _ => 4 * self.cols,
        }
    }

    /// Where the row values start (q8 keeps all row scales first).
    fn values_offset(&self) -> usize {
        self.offset + if self.encoding == Encoding::Q8 { self.rows * 4 } else { 0 }
    }

    fn q8_scale(&self, file: &[u8], r: usize) -> f32 {
        let b = &file[self.offset + 4 * r..self.offset + 4 * r + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Row `r` as f32 values into `out`.
    pub fn row(&self, file: &[u8], r: usize, out: &mut [f32]) {
        let (rb, base) = (self.row_bytes(), self.values_offset());
        let bytes = &file[base + r * rb..base + (r + 1) * rb];
        match self.encoding {
            Encoding::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Encoding::Q8 => {
                let s = self.q8_scale(file, r);
                for (o, &b) in out.iter_mut().zip(bytes) {
                    *o = f32::from(b as i8) * s;
                }
            }
            Encoding::Q6 | Encoding::Q4 => block_quant::dequantize_row(self.encoding, bytes, &mut out[..self.cols]),
            _ => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// `out[r] = dot(M[r], x)` for every row, in parallel bands: [`FloatMatrix::matmul`]
    /// of one row.
    #[track_caller]
    pub fn matvec(&self, kernels: &Kernels, file: &[u8], x: &[f32], out: &mut [f32]) {
        self.matmul(kernels, file, &x[..self.cols], 1, out);
    }

    /// `out[t · rows + r] = dot(M[r], xs[t])` for the `n` rows of `xs` (each `cols` wide)
    /// and every row `r` of the matrix, in parallel bands of the matrix's rows. A band
    /// takes each of its rows once and dots it with every input row while it is in cache,
    /// so the matrix is read from memory once for all `n`. The dots go through the kernel
    /// set's multi-input kernels (`Kernels::dots_f16` etc.: each matrix row converted once
    /// for several inputs), whose every result is the bits of the one-input kernel call
    /// (`dot_f16` etc.), whatever `n` and the thread count: a row's outputs are the same
    /// bits alone or beside others. q6/q4 rows give the same bits on every kernel set.
    #[track_caller]
    pub fn matmul(&self, kernels: &Kernels, file: &[u8], xs: &[f32], n: usize, out: &mut [f32]) {
        let (rb, base) = (self.row_bytes(), self.values_offset());
        let data = &file[base..base + self.rows * rb];
        // q6/q4 kernels take whole blocks: each x padded with zeros to the row's padding.
        let padded;
        let (xs, stride) = match self.encoding {
            Encoding::Q6 | Encoding::Q4 if !self.cols.is_multiple_of(block_quant::BLOCK) => {
                let stride = block_quant::blocks(self.cols) * block_quant::BLOCK;
                let mut p = vec![0.0; n * stride];
                for (p, x) in p.chunks_exact_mut(stride).zip(xs.chunks_exact(self.cols)) {
                    p[..self.cols].copy_from_slice(x);
                }
                padded = p;
                (&padded[..], stride)
            }
            _ => (&xs[..n * self.cols], self.cols),
        };
        type Dots = fn(&Kernels, &[u8], usize, &[f32], &mut [f32]);
        type Dot = fn(&Kernels, &[u8], &[f32]) -> f32;
        let (dots, dot): (Dots, Dot) = match self.encoding {
            Encoding::F16 => (Kernels::dots_f16, Kernels::dot_f16),
            Encoding::Q8 => (Kernels::dots_i8, Kernels::dot_i8),
            Encoding::Q6 => (Kernels::dots_q6, Kernels::dot_q6),
            Encoding::Q4 => (Kernels::dots_q4, Kernels::dot_q4),
            _ => (Kernels::dots_f32, Kernels::dot_f32),
        };
        crate::pool::for_each_column_mut(&mut out[..n * self.rows], FLOAT_BAND, n, n, &|band, _, outs| {
            let r0 = band * FLOAT_BAND;
            let r1 = (r0 + FLOAT_BAND).min(self.rows);
            let mut y = [0f32; FLOAT_BAND * DOTS_AT_ONCE];
            for (g, group) in xs.chunks(DOTS_AT_ONCE * stride).enumerate() {
                let inputs = group.len() / stride;
                let (band_rows, y) = (&data[r0 * rb..r1 * rb], &mut y[..inputs * (r1 - r0)]);
                if inputs == 1 {
                    // One input (a matvec): one row at a time, a single stream through memory.
                    for (y, row) in y.iter_mut().zip(band_rows.chunks_exact(rb)) {
                        *y = dot(kernels, row, group);
                    }
                } else {
                    dots(kernels, band_rows, rb, group, y);
                }
                for (k, y) in y.chunks_exact(r1 - r0).enumerate() {
                    let out = &mut outs.row(g * DOTS_AT_ONCE + k)[..r1 - r0];
                    if self.encoding == Encoding::Q8 {
                        // The row's scale after its dot, as `dot_i8(row, x) * scale`.
                        for (i, (o, &y)) in out.iter_mut().zip(y).enumerate() {
                            *o = y * self.q8_scale(file, r0 + i);
                        }
                    } else {
                        out.copy_from_slice(y);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bias comes after the scale, then the output combines as without one.
    #[test]
    fn biased_rescale_adds_after_the_scale() {
        let (acc, f, bias) = ([4i32, -6], 0.5f32, [1.0f32, -0.25]);
        let bias_bytes: Vec<u8> = bias.iter().flat_map(|b| b.to_le_bytes()).collect();
        let y = [4.0 * 0.5 + 1.0, -6.0 * 0.5 - 0.25]; // 3, -3.25
        let run = |how, start: [f32; 2]| {
            let mut dst = start;
            rescale_biased(how, &mut dst, &acc, f, &bias_bytes);
            dst
        };
        assert_eq!(run(Combine::Store, [9.0, 9.0]), y);
        assert_eq!(run(Combine::Add, [1.0, 2.0]), [4.0, -1.25]);
        assert_eq!(run(Combine::GateReluSquared, [2.0, -1.0]), [4.0 * y[0], 0.0 * y[1]]);
        let silu = |g: f32| crate::kernels::float::silu(g);
        assert_eq!(run(Combine::GateSilu, [2.0, -1.0]), [silu(2.0) * y[0], silu(-1.0) * y[1]]);
    }
}
