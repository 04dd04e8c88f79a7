//! The BitNet b1.58 forward pass, in the order the data flows.
//!
//! Per layer (1bitLLM's BitnetForCausalLM):
//!
//! ```text
//! x ─ attn_norm ─ BitLinear q,k,v ─ RoPE ─ causal softmax attention ─ attn_sub_norm ─ BitLinear o ─(+x)
//!   ─ ffn_norm ─ BitLinear gate,up ─ act(gate)·up ─ ffn_sub_norm ─ BitLinear down ─(+x)
//! ```
//!
//! then `output_norm` and the output projection (the embedding when tied).
//!
//! BitLinear: `s_x = 127 / max|x|`, `xq = round_half_even(x · s_x)` clamped to int8, an exact
//! integer dot product with the ternary weights, and one rescale `y = dot · scale / s_x`
//! (`scale = mean|W|`, see SPEC.md). Inputs shared by several projections (q/k/v, gate/up)
//! are quantized once (quantization is a function of the input alone) and their products
//! run in one parallel region. Each norm is fused with the quantization that follows it,
//! and each rescale with what consumes it (the residual add, `act(gate)·up`).
//!
//! The weights are ranges into the memory-mapped file ([`ModelFile`]); everything that
//! changes while running lives in [`State`], allocated once. Prompts run in chunks of up
//! to [`State`]'s batch size, layer by layer, so each weight row is used for every token
//! of the chunk; a single token is a chunk of one and takes the very same code path.

use crate::kernels::{self, CacheElem, Kernels};
use crate::loader::ModelFile;
use crate::ops::{
    attend_scratch_len, attend_tokens_scratch_len, combine_spans, partial_len, rmsnorm, rope, value_at, Combine,
    FloatMatrix, HeadsAt, ATTEND_TOKENS, KEY_BLOCK, SPAN,
};
use crate::pool;
use anyhow::{bail, Context, Result};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use std::path::Path;
use tern_format::names::{self, BlockTensor};
use tern_format::ternary::{padded_cols, row_bytes};
use tern_format::{find_tensor, Activation, Encoding, ModelConfig, Shape, TensorInfo};
use zerocopy::{FromBytes, IntoBytes};

// ---------------------------------------------------------------------------------------
// Weights

/// A packed ternary matrix in the file.
#[derive(Debug, Clone, Copy)]
struct Ternary {
    offset: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// `max(mean|W|, 1e-5)`: `W ≈ scale · Wq`.
    scale: f32,
}

/// One transformer block.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Ternary,
    wk: Ternary,
    wv: Ternary,
    attn_sub_norm: Option<Vec<f32>>,
    wo: Ternary,
    ffn_norm: Vec<f32>,
    w_gate: Ternary,
    w_up: Ternary,
    ffn_sub_norm: Option<Vec<f32>>,
    w_down: Ternary,
}

/// A loaded model: the mapped file and typed views of its weights.
pub struct Model {
    file: ModelFile,
    config: ModelConfig,
    kernels: Kernels,
    embed: FloatMatrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    /// The output projection: the embedding itself when tied.
    output: FloatMatrix,
    /// A gain of ones as wide as any activation row (for projections without a sub-norm).
    ones: Vec<f32>,
}

impl Model {
    /// Maps and validates a `.tern` file and checks that it holds every tensor its config needs.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(ModelFile::open(path)?)
    }

    pub fn from_file(file: ModelFile) -> Result<Self> {
        let config = file.config().clone();
        let ctx = || format!("{}: not a usable model", file.path().display());
        let find = |name: &str, encodings: &[Encoding], shape: Shape| -> Result<&TensorInfo> {
            find_tensor(file.tensors(), name, encodings, shape).with_context(ctx)
        };
        let floats = |info: &TensorInfo| -> Vec<f32> {
            file.data(info).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        let ternary = |info: &TensorInfo| -> Ternary {
            let Shape::Matrix { rows, cols } = info.shape else { unreachable!("checked a matrix") };
            Ternary {
                offset: info.offset as usize,
                rows: rows as usize,
                cols: cols as usize,
                row_bytes: row_bytes(cols as usize),
                // families (issue 24): the stored scale becomes β here, once, by the file's
                // scale convention (the reciprocal for transformers' BitLinear).
                scale: config.scale_convention.multiplier(info.scale),
            }
        };
        let float_matrix = |info: &TensorInfo| -> FloatMatrix {
            let Shape::Matrix { rows, cols } = info.shape else { unreachable!("checked a matrix") };
            FloatMatrix {
                offset: info.offset as usize,
                rows: rows as usize,
                cols: cols as usize,
                encoding: info.encoding,
            }
        };

        let (v, h) = (u64::from(config.vocab_size), u64::from(config.hidden_size));
        let matrix = Shape::Matrix { rows: v, cols: h };
        let embed = float_matrix(find(names::TOKEN_EMBD, &names::MATRIX_FLOAT, matrix)?);
        let output_norm = floats(find(names::OUTPUT_NORM, &[Encoding::F32], Shape::Vector(h))?);
        let output =
            if config.tied_output { embed } else { float_matrix(find(names::OUTPUT, &names::MATRIX_FLOAT, matrix)?) };
        let mut layers = Vec::with_capacity(config.n_layers as usize);
        for l in 0..config.n_layers {
            let get = |t: BlockTensor| find(&t.name(l), &[t.encoding()], t.shape(&config));
            let norm = |t: BlockTensor| -> Result<Option<Vec<f32>>> {
                Ok(if t.present(&config) { Some(floats(get(t)?)) } else { None })
            };
            layers.push(Layer {
                attn_norm: floats(get(BlockTensor::AttnNorm)?),
                wq: ternary(get(BlockTensor::AttnQ)?),
                wk: ternary(get(BlockTensor::AttnK)?),
                wv: ternary(get(BlockTensor::AttnV)?),
                attn_sub_norm: norm(BlockTensor::AttnSubNorm)?,
                wo: ternary(get(BlockTensor::AttnOutput)?),
                ffn_norm: floats(get(BlockTensor::FfnNorm)?),
                w_gate: ternary(get(BlockTensor::FfnGate)?),
                w_up: ternary(get(BlockTensor::FfnUp)?),
                ffn_sub_norm: norm(BlockTensor::FfnSubNorm)?,
                w_down: ternary(get(BlockTensor::FfnDown)?),
            });
        }
        let widest = (config.hidden_size as usize).max(config.q_dim()).max(config.intermediate_size as usize);
        let ones = vec![1.0; widest];
        Ok(Model { kernels: Kernels::detect(), file, config, embed, layers, output_norm, output, ones })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Uses other kernels (the reference tests run every kernel set on whole models).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    // -----------------------------------------------------------------------------------
    // Forward

    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the logits of the last.
    pub fn forward<'s>(&self, st: &'s mut State, tokens: &[u32], pos: usize) -> Result<&'s [f32]> {
        self.run(st, tokens, pos, None, None)?;
        let vocab = self.config.vocab_size as usize;
        let n = (tokens.len() - 1) % st.batch + 1;
        Ok(&st.logits[(n - 1) * vocab..n * vocab])
    }

    /// Runs `tokens` and hands the logits of every position to `sink(pos, logits)`.
    pub fn forward_all(
        &self,
        st: &mut State,
        tokens: &[u32],
        pos: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run(st, tokens, pos, Some(sink), None)
    }

    /// Like [`forward_all`](Model::forward_all), and hands every layer's input and output
    /// hidden state to `trace(layer, pos, stage, hidden)`.
    pub fn forward_traced(
        &self,
        st: &mut State,
        tokens: &[u32],
        pos: usize,
        sink: LogitsSink,
        trace: TraceSink,
    ) -> Result<()> {
        self.run(st, tokens, pos, Some(sink), Some(trace))
    }

    /// Runs layer `layer` alone on given input hidden states (one row of `hidden_size` per
    /// position, positions `pos..`), writing that layer's KV cache, and returns its
    /// outputs. Lets a test feed a layer exactly the input another implementation saw.
    pub fn forward_layer(&self, st: &mut State, layer: usize, inputs: &[f32], pos: usize) -> Result<Vec<f32>> {
        let h = self.config.hidden_size as usize;
        if layer >= self.layers.len() || !inputs.len().is_multiple_of(h) {
            bail!("forward_layer: layer {layer} or input length {} is out of range", inputs.len());
        }
        let n_tok = inputs.len() / h;
        self.check_span(st, n_tok, pos)?;
        let mut out = Vec::with_capacity(inputs.len());
        for (c, chunk) in inputs.chunks(st.batch * h).enumerate() {
            let n = chunk.len() / h;
            st.x[..chunk.len()].copy_from_slice(chunk);
            self.layer(st, layer, n, pos + c * st.batch);
            out.extend_from_slice(&st.x[..chunk.len()]);
        }
        Ok(out)
    }

    fn check_span(&self, st: &State, n_tok: usize, pos: usize) -> Result<()> {
        if n_tok == 0 {
            bail!("no tokens to run");
        }
        if pos + n_tok > st.max_seq {
            bail!(
                "positions {pos}..{} exceed the context of {} positions this run was sized for (model maximum {})",
                pos + n_tok,
                st.max_seq,
                self.config.max_positions
            );
        }
        Ok(())
    }

    fn run(
        &self,
        st: &mut State,
        tokens: &[u32],
        pos: usize,
        mut all_logits: Option<LogitsSink>,
        mut trace: Option<TraceSink>,
    ) -> Result<()> {
        let c = &self.config;
        let (h, vocab) = (c.hidden_size as usize, c.vocab_size as usize);
        self.check_span(st, tokens.len(), pos)?;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= c.vocab_size) {
            bail!("token id {bad} is not below the vocabulary size {vocab}");
        }
        let bytes = self.file.bytes();
        let last_chunk = (tokens.len() - 1) / st.batch;
        for (ci, chunk) in tokens.chunks(st.batch).enumerate() {
            let n = chunk.len();
            let p0 = pos + ci * st.batch;
            for (t, &tok) in chunk.iter().enumerate() {
                self.embed.row(bytes, tok as usize, &mut st.x[t * h..(t + 1) * h]);
            }
            for l in 0..self.layers.len() {
                if let Some(tr) = trace.as_mut() {
                    for t in 0..n {
                        tr(l, p0 + t, Stage::LayerInput, &st.x[t * h..(t + 1) * h]);
                    }
                }
                self.layer(st, l, n, p0);
                if let Some(tr) = trace.as_mut() {
                    for t in 0..n {
                        tr(l, p0 + t, Stage::LayerOutput, &st.x[t * h..(t + 1) * h]);
                    }
                }
            }
            // Logits at every position when asked for, else only for the very last token.
            let wanted = match (&all_logits, ci == last_chunk) {
                (Some(_), _) => 0..n,
                (None, true) => n - 1..n,
                (None, false) => 0..0,
            };
            for t in wanted {
                let logits = &mut st.logits[t * vocab..(t + 1) * vocab];
                rmsnorm(&mut st.xn[..h], &st.x[t * h..(t + 1) * h], &self.output_norm, c.rms_eps);
                self.output.matvec(&self.kernels, bytes, &st.xn[..h], logits);
                if let Some(sink) = all_logits.as_mut() {
                    sink(p0 + t, logits);
                }
            }
        }
        Ok(())
    }

    /// One transformer block over the `n` tokens in `st.x` at positions `p0..p0 + n`.
    fn layer(&self, st: &mut State, l: usize, n: usize, p0: usize) {
        let c = &self.config;
        let (h, qd, kvd, inter) = (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize);
        let hd = c.head_dim as usize;
        let w = &self.layers[l];

        // Attention: norm, q/k/v from one quantized input, RoPE, cache, softmax attention.
        self.norm_quantize(st, Src::X, n, h, Some(&w.attn_norm));
        self.bitlinear(st, n, [(&w.wq, Out::Q), (&w.wk, Out::K), (&w.wv, Out::V)]);
        let half = hd / 2;
        for t in 0..n {
            let pos = p0 + t;
            let (cos, sin) = (&st.rope_cos[pos * half..(pos + 1) * half], &st.rope_sin[pos * half..(pos + 1) * half]);
            for head in st.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                rope(head, cos, sin);
            }
            for head in st.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                rope(head, cos, sin);
            }
        }
        let (q, new, out) = (&st.q[..n * qd], (&st.k[..n * kvd], &st.v[..n * kvd]), &mut st.att[..n * qd]);
        let k = &self.kernels;
        match st.kv_type {
            KvType::F32 => {
                let cache = layer_cache::<f32>(&mut st.kv_cache, l, c.n_layers);
                attention(c, k, q, new, cache, st.padded_seq, &mut st.parts, out, p0);
            }
            KvType::F16 => {
                // The new keys and values rounded to f16 (to nearest, ties to even) first.
                let new16 = (&mut st.k16[..n * kvd], &mut st.v16[..n * kvd]);
                new16.0.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(new.0);
                new16.1.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(new.1);
                let cache = layer_cache::<u16>(&mut st.kv_cache, l, c.n_layers);
                attention(c, k, q, (&*new16.0, &*new16.1), cache, st.padded_seq, &mut st.parts, out, p0);
            }
        }
        self.norm_quantize(st, Src::Att, n, qd, w.attn_sub_norm.as_deref());
        self.bitlinear(st, n, [(&w.wo, Out::Residual)]);

        // MLP: norm, gate/up from one quantized input, act(gate)·up, sub-norm, down.
        self.norm_quantize(st, Src::X, n, h, Some(&w.ffn_norm));
        self.bitlinear(st, n, [(&w.w_gate, Out::Gate), (&w.w_up, Out::GatedUp)]);
        self.norm_quantize(st, Src::Gate, n, inter, w.ffn_sub_norm.as_deref());
        self.bitlinear(st, n, [(&w.w_down, Out::Residual)]);
    }

    /// RMSNorm with `gain` (none: the rows as they are) of the first `n` rows (each `cols`
    /// wide) of `src`, quantized into `st.xq`, `st.s_x` and `st.act_sum`; one parallel task
    /// per token.
    fn norm_quantize(&self, st: &mut State, src: Src, n: usize, cols: usize, gain: Option<&[f32]>) {
        let pc = padded_cols(cols);
        let src = match src {
            Src::X => &st.x,
            Src::Att => &st.att,
            Src::Gate => &st.gate,
        };
        let (eps, k) = (self.config.rms_eps, &self.kernels);
        // Without a norm: a gain of ones, which leaves every value as it is.
        let (gain, normed) = match gain {
            Some(g) => (g, true),
            None => (&self.ones[..], false),
        };
        pool::for_each_chunk_mut2(n, &mut st.xq, pc, &mut st.quant, 1, &|t, xq, quant| {
            quant[0] = k.quantize_normed(&src[t * cols..(t + 1) * cols], gain, normed.then_some(eps), xq);
        });
        for (t, &(s, sum)) in st.quant[..n].iter().enumerate() {
            st.s_x[t] = s;
            st.act_sum[t] = sum;
        }
    }

    /// BitLinear on the `n` tokens quantized in `st.xq`, for one or more matrices that
    /// share that input (their products in one parallel region): the exact integer
    /// products, then per token one rescale `y = acc · scale / s_x`, which `Out` stores
    /// or combines. Matrices are rescaled in order (gate before the gated up projection).
    #[track_caller]
    fn bitlinear<const N: usize>(&self, st: &mut State, n: usize, proj: [(&Ternary, Out); N]) {
        let (cols, row_bytes) = (proj[0].0.cols, proj[0].0.row_bytes);
        debug_assert!(proj.iter().all(|(w, _)| w.cols == cols));
        let pc = padded_cols(cols);
        let bytes = self.file.bytes();
        let packed = proj.map(|(w, _)| &bytes[w.offset..w.offset + w.rows * w.row_bytes]);
        if n == 1 {
            return self.bitlinear_one(st, &proj, packed);
        }
        let mut rest = &mut st.acc[..];
        let accs = proj.map(|(w, _)| {
            let (acc, r) = std::mem::take(&mut rest).split_at_mut(w.rows * n);
            rest = r;
            acc
        });
        kernels::ternary_gemms(&self.kernels, packed, row_bytes, &st.xq[..n * pc], &st.act_sum[..n], accs);
        let mut at = 0;
        for (w, out) in proj {
            self.rescale(st, w, n, out, at);
            at += w.rows * n;
        }
    }

    /// [`bitlinear`](Model::bitlinear) for one token: every band rescales its own rows as
    /// it computes them (the same operations, without a serial pass afterwards).
    #[track_caller]
    fn bitlinear_one<const N: usize>(&self, st: &mut State, proj: &[(&Ternary, Out); N], packed: [&[u8]; N]) {
        let (k, row_bytes, pc) = (&self.kernels, proj[0].0.row_bytes, padded_cols(proj[0].0.cols));
        let (xq, act_sum) = (&st.xq[..pc], st.act_sum[0]);
        let f = proj.map(|(w, _)| w.scale / st.s_x[0]);
        match (proj.map(|(_, out)| out).as_slice(), packed.as_slice()) {
            ([Out::Q, Out::K, Out::V], &[pq, pk, pv]) => {
                let dsts = [&mut st.q[..], &mut st.k[..], &mut st.v[..]];
                kernels::ternary_gemv(
                    k,
                    [pq, pk, pv],
                    row_bytes,
                    xq,
                    act_sum,
                    dsts,
                    [Combine::Store; 3],
                    [f[0], f[1], f[2]],
                );
            }
            ([Out::Gate, Out::GatedUp], &[pg, pu]) => {
                let act = self.gated();
                kernels::ternary_gemv_gated(k, pg, pu, row_bytes, xq, act_sum, &mut st.gate, act, [f[0], f[1]]);
            }
            ([Out::Residual], &[p]) => {
                kernels::ternary_gemv(k, [p], row_bytes, xq, act_sum, [&mut st.x[..]], [Combine::Add], [f[0]]);
            }
            _ => unreachable!("layer() calls bitlinear with q/k/v, gate/up or one residual projection"),
        }
    }

    /// How the up projection combines with the stored gate: `act(gate) · up`.
    fn gated(&self) -> Combine {
        match self.config.activation {
            Activation::Silu => Combine::GateSilu,
            Activation::ReluSquared => Combine::GateReluSquared,
        }
    }

    /// The rescale of one matrix whose products are in `st.acc[at..]`, one task per token.
    #[track_caller]
    fn rescale(&self, st: &mut State, w: &Ternary, n: usize, out: Out, at: usize) {
        let (acc, s_x, k) = (&st.acc[at..at + w.rows * n], &st.s_x[..n], &self.kernels);
        let (dst, how) = match out {
            Out::Q => (&mut st.q, Combine::Store),
            Out::K => (&mut st.k, Combine::Store),
            Out::V => (&mut st.v, Combine::Store),
            Out::Gate => (&mut st.gate, Combine::Store),
            Out::GatedUp => (&mut st.gate, self.gated()),
            Out::Residual => (&mut st.x, Combine::Add),
        };
        let rescale = |t: usize, row: &mut [f32]| {
            let f = w.scale / s_x[t];
            let mut r = 0;
            for part in kernels::token_outputs(acc, w.row_bytes, w.rows, n, t) {
                k.rescale(how, &mut row[r..r + part.len()], part, f);
                r += part.len();
            }
        };
        pool::for_each_chunk_mut(&mut dst[..n * w.rows], w.rows, &rescale);
    }
}

thread_local! {
    /// Attention scratch (scores and accumulators), per thread; grows to the longest
    /// context once.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Causal softmax attention of the `n` tokens at positions `p0..p0 + n`: their keys and
/// values `new` (`n` rows of `kv_dim`, RoPE applied) go into this layer's `cache`, then
/// the query heads attend. Grouped-query attention: query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`.
///
/// The layer's cache holds the keys, then the values, of `padded_seq` positions, each in
/// blocks of [`KEY_BLOCK`] positions (layout: [`crate::ops::attend_heads`]). So the keys
/// and values of all heads at positions `0..p` are two contiguous stretches, which a
/// decoded token streams front to back: per head over the whole context, they would be a
/// few kilobytes here and there, which the prefetchers do not follow (a token waited ~3x
/// longer on them). Within a block, each kv head's keys and values are one stretch.
///
/// Attention runs over spans of [`SPAN`] positions, whose partial results combine at the
/// end ([`crate::ops::combine_spans`]). One token runs tasks of (span, run of whole kv-head
/// groups), at least two per thread (work to take over from a thread that shares its core
/// with another process), writing partial results to `parts`. A prompt chunk runs one task
/// per head and run of up to [`ATTEND_TOKENS`] tokens, which reads each key and value once
/// for all of its tokens ([`crate::ops::attend_tokens`]). Both compute the same spans the
/// same way: the same bits.
#[allow(clippy::too_many_arguments)]
fn attention<E: CacheElem>(
    c: &ModelConfig,
    kernels: &Kernels,
    q: &[f32],
    new: (&[E], &[E]),
    cache: &mut [E],
    padded_seq: usize,
    parts: &mut [f32],
    out: &mut [f32],
    p0: usize,
) {
    let (hd, n_heads, n_kv) = (c.head_dim as usize, c.n_heads as usize, c.n_kv_heads as usize);
    let (group, kv_dim, n) = (n_heads / n_kv, n_kv * hd, q.len() / (n_heads * hd));
    let (keys, values) = cache.split_at_mut(padded_seq * kv_dim);
    let (k_new, v_new) = new;
    for t in 0..n {
        store_kv(keys, values, &k_new[t * kv_dim..(t + 1) * kv_dim], &v_new[t * kv_dim..(t + 1) * kv_dim], p0 + t, hd);
    }
    let (keys, values) = (&*keys, &*values);
    let scale = 1.0 / (hd as f32).sqrt();
    let at = |first_head| HeadsAt { head_dim: hd, first_head, group, kv_dim, scale };
    if n == 1 {
        // One token: tasks of (span, run of kv-head groups), span by span, so that a
        // thread's run of tasks streams a stretch of the cache, in runs of heads where the
        // spans alone give fewer than two tasks per thread. Then the spans combine.
        let (len, pl) = (p0 + 1, partial_len(hd));
        let spans = len.div_ceil(SPAN);
        // A task's heads hold at most 2 KB of a position's values (with more, its
        // accumulators and prefetched values crowd L1: f32 tg64 @ d1024 with 16 heads per
        // task ran 42.3 / 62.2 tok/s at 1 / 2 threads against 46.4 / 70.5 with 8; f16 ran
        // 68.1 / 92.4 with 16 against 64.8 / 84.4 with 8).
        let max_kv = (2048 / (hd * std::mem::size_of::<E>())).max(1);
        let runs = (2 * pool::threads()).div_ceil(spans).max(n_kv.div_ceil(max_kv)).clamp(1, n_kv);
        // Whole groups, as many per run as still gives `runs` runs: a divisor of n_kv.
        let kv_per_run = (1..=n_kv / runs).rev().find(|d| n_kv % d == 0).unwrap_or(1);
        let (heads, runs) = (kv_per_run * group, n_kv / kv_per_run);
        let parts = &mut parts[..spans * n_heads * pl];
        pool::for_each_chunk_mut(parts, heads * pl, &|i, part| {
            let (span, first) = (i / runs, i % runs * heads);
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let need = attend_scratch_len(heads, hd, SPAN);
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let q = &q[first * hd..(first + heads) * hd];
                let positions = span * SPAN..((span + 1) * SPAN).min(len);
                kernels.attend(q, at(first), keys, values, &mut scratch, positions, part);
            });
        });
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            combine_spans(&parts[h * pl..], n_heads * pl, spans, out);
        }
    } else {
        // A prompt chunk: per head, runs of ATTEND_TOKENS tokens, each run reading the cache once.
        const T: usize = ATTEND_TOKENS;
        pool::for_each_column_mut(out, hd, n, T, &|h, tokens, column| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let len = 2 * T * hd + attend_tokens_scratch_len(hd, padded_seq);
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                let (qs, rest) = scratch.split_at_mut(T * hd);
                let (outs, scratch) = rest.split_at_mut(T * hd);
                qs.fill(0.0);
                for (i, t) in tokens.clone().enumerate() {
                    qs[i * hd..(i + 1) * hd].copy_from_slice(&q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd]);
                }
                let (n0, count) = (p0 + tokens.start + 1, tokens.len());
                kernels.attend_tokens(qs, at(h), keys, values, scratch, n0, count, outs);
                for (i, t) in tokens.enumerate() {
                    column.row(t).copy_from_slice(&outs[i * hd..(i + 1) * hd]);
                }
            });
        });
    }
}

/// Stores the keys and values of all kv heads at position `pos` (see [`attention`]).
fn store_kv<E: Copy>(keys: &mut [E], values: &mut [E], k: &[E], v: &[E], pos: usize, hd: usize) {
    let (kv_dim, kb) = (k.len(), KEY_BLOCK);
    let block = &mut keys[pos / kb * kb * kv_dim..(pos / kb + 1) * kb * kv_dim];
    for (row, &k) in block.chunks_exact_mut(kb).zip(k) {
        row[pos % kb] = k;
    }
    for (h, v) in v.chunks_exact(hd).enumerate() {
        let at = value_at(pos, h * hd, kv_dim, hd);
        values[at..at + hd].copy_from_slice(v);
    }
}

/// Receives `(position, logits)`.
pub type LogitsSink<'a> = &'a mut dyn FnMut(usize, &[f32]);
/// Receives `(layer, position, stage, hidden state)`.
pub type TraceSink<'a> = &'a mut dyn FnMut(usize, usize, Stage, &[f32]);

/// Which point of a layer a traced hidden state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    LayerInput,
    LayerOutput,
}

/// What a BitLinear does with its outputs `y`.
#[derive(Clone, Copy)]
enum Out {
    /// Stores them in `st.q`, `st.k`, `st.v` or `st.gate`.
    Q,
    K,
    V,
    Gate,
    /// The up projection: `gate = act(gate) · y` (the MLP's product, in place).
    GatedUp,
    /// A block's last projection: `x += y`.
    Residual,
}

/// Which rows a norm + quantization reads.
#[derive(Clone, Copy)]
enum Src {
    X,
    Att,
    Gate,
}

// ---------------------------------------------------------------------------------------
// Run state

/// Everything that changes during a run, allocated once for a context of `max_seq`
/// positions and prompt chunks of up to `batch` tokens.
pub struct State {
    max_seq: usize,
    /// Positions the key cache holds: `max_seq` rounded up to a key block.
    padded_seq: usize,
    batch: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: Vec<i8>,
    s_x: Vec<f32>,
    act_sum: Vec<i32>,
    /// `(s_x, act_sum)` per token as the parallel quantization writes them.
    quant: Vec<(f32, i32)>,
    acc: Vec<i32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    /// Per layer: keys, then values, of `padded_seq` positions (see [`attention`]),
    /// as `kv_type` says. Anonymous memory with huge pages advised: decoding at depth
    /// streams the whole cache once per token (through 4 KiB pages, a TLB miss every 4 KiB).
    kv_cache: memmap2::MmapMut,
    kv_type: KvType,
    /// The new keys and values as f16 bits, for an f16 cache.
    k16: Vec<u16>,
    v16: Vec<u16>,
    /// A decoded token's partial attention results, per span and head (see [`attention`]).
    parts: Vec<f32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    logits: Vec<f32>,
}

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// f32: attention exactly as the reference computes it.
    #[default]
    F32,
    /// f16 (rounded to nearest, ties to even): half the memory and half the bytes a
    /// decoded token reads from the cache, as llama.cpp's default cache.
    F16,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// Zeroed memory for a KV cache of `bytes`, with huge pages advised (which may be refused:
/// the cache works either way).
fn kv_cache(bytes: usize) -> Result<memmap2::MmapMut> {
    let bytes = bytes.max(4);
    let map = memmap2::MmapMut::map_anon(bytes)
        .with_context(|| format!("allocating a KV cache of {:.1} MB", bytes as f64 / 1e6))?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// Layer `l`'s part of a KV cache of `E` values.
fn layer_cache<E: CacheElem + FromBytes + IntoBytes>(map: &mut memmap2::MmapMut, l: usize, n_layers: u32) -> &mut [E] {
    // An anonymous map is page-aligned and holds whole values of its type (see `State::new`).
    let all = <[E]>::mut_from_bytes(&mut map[..]).expect("KV cache: page-aligned whole values");
    let per_layer = all.len() / n_layers as usize;
    &mut all[l * per_layer..(l + 1) * per_layer]
}

/// Default prompt chunk size.
pub const DEFAULT_BATCH: usize = 32;

impl State {
    /// A run state for up to `max_seq` positions (at most the model's `max_positions`),
    /// with an f32 KV cache.
    pub fn new(config: &ModelConfig, max_seq: usize, batch: usize) -> Result<Self> {
        Self::with_kv(config, max_seq, batch, KvType::F32)
    }

    /// [`State::new`] with a KV cache of `kv_type`.
    pub fn with_kv(config: &ModelConfig, max_seq: usize, batch: usize, kv_type: KvType) -> Result<Self> {
        if max_seq == 0 || max_seq > config.max_positions as usize {
            bail!("context of {max_seq} positions is outside 1..={} (the model's maximum)", config.max_positions);
        }
        let batch = batch.clamp(1, max_seq);
        let c = config;
        let (h, qd, kvd, inter, vocab) =
            (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize, c.vocab_size as usize);
        let widest = h.max(qd).max(inter);
        // Products of the widest fused projection: q/k/v or gate/up.
        let rows = (qd + 2 * kvd).max(2 * inter).max(h);
        let half = c.head_dim as usize / 2;
        // RoPE tables (Hugging Face: inv_freq = theta^(-2i/d), angle = pos * inv_freq).
        let mut rope_cos = vec![0f32; max_seq * half];
        let mut rope_sin = vec![0f32; max_seq * half];
        for pos in 0..max_seq {
            for i in 0..half {
                let inv_freq = f64::from(c.rope_theta).powf(-2.0 * i as f64 / c.head_dim as f64);
                let angle = pos as f64 * inv_freq;
                rope_cos[pos * half + i] = angle.cos() as f32;
                rope_sin[pos * half + i] = angle.sin() as f32;
            }
        }
        let padded_seq = max_seq.next_multiple_of(KEY_BLOCK);
        Ok(State {
            max_seq,
            padded_seq,
            batch,
            x: vec![0.0; batch * h],
            xn: vec![0.0; h],
            xq: vec![0; batch * padded_cols(widest)],
            s_x: vec![0.0; batch],
            act_sum: vec![0; batch],
            quant: vec![(0.0, 0); batch],
            acc: vec![0; batch * rows],
            q: vec![0.0; batch * qd],
            k: vec![0.0; batch * kvd],
            v: vec![0.0; batch * kvd],
            att: vec![0.0; batch * qd],
            gate: vec![0.0; batch * inter],
            kv_cache: kv_cache(c.n_layers as usize * 2 * padded_seq * kvd * kv_type.bytes())?,
            kv_type,
            k16: if kv_type == KvType::F16 { vec![0; batch * kvd] } else { Vec::new() },
            v16: if kv_type == KvType::F16 { vec![0; batch * kvd] } else { Vec::new() },
            parts: vec![0.0; max_seq.div_ceil(SPAN) * c.n_heads as usize * partial_len(c.head_dim as usize)],
            rope_cos,
            rope_sin,
            logits: vec![0.0; batch * vocab],
        })
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv_cache.len()
    }
}
