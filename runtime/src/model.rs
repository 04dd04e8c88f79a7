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
//! This file says *what* runs, in order; two layers below say *how*: [`crate::matmul`]
//! (every `y = W·x`, cut into bands for the pool) and [`crate::attention`] (RoPE, the KV
//! cache and attention, one call per layer). Both hand their bands and tasks to
//! [`crate::kernels`], chosen once at load.
//!
//! The weights are ranges into the memory-mapped file ([`ModelFile`]); everything that
//! changes while running lives in [`State`], allocated once: a sequence's [`Attention`]
//! (its KV cache) and the [`Scratch`] of a step's rows. Prompts run in chunks of up
//! to [`State`]'s batch size, layer by layer, so each weight row is used for every token
//! of the chunk; a single token is a chunk of one and takes the very same code path.
//! The rows of a step need not belong to one sequence: [`crate::batch`] runs rows of
//! several sequences through one pass, each layer's attention per sequence.

use crate::attention::Attention;
use crate::kernels::Kernels;
use crate::loader::ModelFile;
use crate::matmul::{self, Combine, FloatMatrix, Input, Ternary};
use crate::ops::rmsnorm;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tern_format::names::{self, BlockTensor};
use tern_format::{find_tensor, Activation, Encoding, ModelConfig, Shape, TensorInfo};

pub use crate::attention::KvType;

// ---------------------------------------------------------------------------------------
// Weights

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
    /// Each projection's own input norm gain (format version 3, `LINEAR_NORM`).
    in_norms: Option<InNorms>,
}

/// The input norm gains of one block's projections (SPEC.md §8a).
struct InNorms {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
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
        let (v, h) = (u64::from(config.vocab_size), u64::from(config.hidden_size));
        let matrix = Shape::Matrix { rows: v, cols: h };
        // A q6/q4 matrix's block scales are checked here, once (a few ms at a 128k vocabulary).
        let float_matrix = |name: &str| -> Result<FloatMatrix> {
            let info = find(name, &names::MATRIX_FLOAT, matrix)?;
            tern_format::check_block_scales(info, file.data(info)).with_context(ctx)?;
            Ok(FloatMatrix::new(info))
        };
        let embed = float_matrix(names::TOKEN_EMBD)?;
        let output_norm = floats(find(names::OUTPUT_NORM, &[Encoding::F32], Shape::Vector(h))?);
        let output = if config.tied_output { embed } else { float_matrix(names::OUTPUT)? };
        let mut layers = Vec::with_capacity(config.n_layers as usize);
        for l in 0..config.n_layers {
            let get = |t: BlockTensor| find(&t.name(l), &[t.encoding()], t.shape(&config));
            let norm = |t: BlockTensor| -> Result<Option<Vec<f32>>> {
                Ok(if t.present(&config) { Some(floats(get(t)?)) } else { None })
            };
            // A projection, with its bias when the config has one (SPEC.md §8a).
            let linear = |t: BlockTensor| -> Result<Ternary> {
                let w = Ternary::new(get(t)?, config.scale_convention);
                let Shape::Matrix { rows, .. } = t.shape(&config) else { unreachable!("a projection") };
                Ok(if t.has_bias(&config) {
                    w.with_bias(find(&t.bias_name(l), &[Encoding::F32], Shape::Vector(rows))?)
                } else {
                    w
                })
            };
            let in_norm = |t: BlockTensor| -> Result<Vec<f32>> {
                let Shape::Matrix { cols, .. } = t.shape(&config) else { unreachable!("a projection") };
                Ok(floats(find(&t.in_norm_name(l), &[Encoding::F32], Shape::Vector(cols))?))
            };
            let in_norms = match config.linear.norm_eps {
                None => None,
                Some(_) => Some(InNorms {
                    q: in_norm(BlockTensor::AttnQ)?,
                    k: in_norm(BlockTensor::AttnK)?,
                    v: in_norm(BlockTensor::AttnV)?,
                    o: in_norm(BlockTensor::AttnOutput)?,
                    gate: in_norm(BlockTensor::FfnGate)?,
                    up: in_norm(BlockTensor::FfnUp)?,
                    down: in_norm(BlockTensor::FfnDown)?,
                }),
            };
            layers.push(Layer {
                attn_norm: floats(get(BlockTensor::AttnNorm)?),
                wq: linear(BlockTensor::AttnQ)?,
                wk: linear(BlockTensor::AttnK)?,
                wv: linear(BlockTensor::AttnV)?,
                attn_sub_norm: norm(BlockTensor::AttnSubNorm)?,
                wo: linear(BlockTensor::AttnOutput)?,
                ffn_norm: floats(get(BlockTensor::FfnNorm)?),
                w_gate: linear(BlockTensor::FfnGate)?,
                w_up: linear(BlockTensor::FfnUp)?,
                ffn_sub_norm: norm(BlockTensor::FfnSubNorm)?,
                w_down: linear(BlockTensor::FfnDown)?,
                in_norms,
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
        // The last token's logits are the only ones computed, in the first row.
        Ok(&st.scratch.logits[..self.config.vocab_size as usize])
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
            let p0 = pos + c * st.batch;
            let State { scratch, attention, .. } = st;
            scratch.x[..chunk.len()].copy_from_slice(chunk);
            self.layer(scratch, layer, n, &mut |k, l, q, key, v, out| attention.forward(k, l, p0, q, key, v, out));
            out.extend_from_slice(&scratch.x[..chunk.len()]);
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
        let (h, vocab) = (self.config.hidden_size as usize, self.config.vocab_size as usize);
        self.check_span(st, tokens.len(), pos)?;
        self.check_tokens(tokens)?;
        let last_chunk = (tokens.len() - 1) / st.batch;
        for (ci, chunk) in tokens.chunks(st.batch).enumerate() {
            let n = chunk.len();
            let p0 = pos + ci * st.batch;
            let State { scratch: st, attention, .. } = &mut *st;
            self.embed_rows(st, chunk);
            for l in 0..self.layers.len() {
                if let Some(tr) = trace.as_mut() {
                    for t in 0..n {
                        tr(l, p0 + t, Stage::LayerInput, &st.x[t * h..(t + 1) * h]);
                    }
                }
                self.layer(st, l, n, &mut |k, l, q, key, v, out| attention.forward(k, l, p0, q, key, v, out));
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
            let logits = self.rows_logits(st, wanted.clone());
            if let Some(sink) = all_logits.as_mut() {
                for (t, logits) in wanted.zip(logits.chunks_exact(vocab)) {
                    sink(p0 + t, logits);
                }
            }
        }
        Ok(())
    }

    /// Every token id must index the vocabulary.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            bail!("token id {bad} is not below the vocabulary size {vocab}");
        }
        Ok(())
    }

    /// The number of transformer blocks.
    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The embeddings of `tokens` (checked ids) into the first rows of `st.x`.
    pub(crate) fn embed_rows(&self, st: &mut Scratch, tokens: &[u32]) {
        let h = self.config.hidden_size as usize;
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed.row(self.file.bytes(), tok as usize, &mut st.x[t * h..(t + 1) * h]);
        }
    }

    /// The logits of the given rows of `st.x` (after the last layer), in the order given:
    /// each row's final norm into `st.xn`, then one output projection of them all (the
    /// matrix read once), into the first rows of `st.logits`, which are returned.
    pub(crate) fn rows_logits<'s>(&self, st: &'s mut Scratch, rows: impl IntoIterator<Item = usize>) -> &'s [f32] {
        let c = &self.config;
        let (h, vocab) = (c.hidden_size as usize, c.vocab_size as usize);
        let mut n = 0;
        for (t, xn) in rows.into_iter().zip(st.xn.chunks_exact_mut(h)) {
            rmsnorm(xn, &st.x[t * h..(t + 1) * h], &self.output_norm, c.rms_eps);
            n += 1;
        }
        let logits = &mut st.logits[..n * vocab];
        if n > 0 {
            self.output.matmul(&self.kernels, self.file.bytes(), &st.xn[..n * h], n, logits);
        }
        logits
    }

    /// One transformer block over the `n` rows in `st.x`; `attend` runs the attention of
    /// their sequences (each row's position and KV cache are its business).
    pub(crate) fn layer(&self, st: &mut Scratch, l: usize, n: usize, attend: AttendRows) {
        let c = &self.config;
        let (h, qd, kvd, inter) = (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize);
        let (kernels, file, eps) = (&self.kernels, self.file.bytes(), c.rms_eps);
        let w = &self.layers[l];
        if let (Some(norms), Some(lin_eps)) = (&w.in_norms, c.linear.norm_eps) {
            return self.layer_with_input_norms(st, l, n, attend, norms, lin_eps);
        }

        // Attention: norm, q/k/v from one quantized input, attention (RoPE, KV cache),
        // sub-norm, o.
        st.input.quantize(kernels, &st.x, n, h, &w.attn_norm, Some(eps));
        let qkv = [&mut st.q[..], &mut st.k[..], &mut st.v[..]];
        matmul::bitlinear(kernels, file, [&w.wq, &w.wk, &w.wv], &mut st.input, qkv, [Combine::Store; 3]);
        let (q, k, v) = (&mut st.q[..n * qd], &mut st.k[..n * kvd], &st.v[..n * kvd]);
        attend(kernels, l, q, k, v, &mut st.att[..n * qd]);
        let (gain, norm_eps) = self.sub_norm(w.attn_sub_norm.as_deref());
        st.input.quantize(kernels, &st.att, n, qd, gain, norm_eps);
        matmul::bitlinear(kernels, file, [&w.wo], &mut st.input, [&mut st.x[..]], [Combine::Add]);

        // MLP: norm, gate/up from one quantized input into act(gate)·up, sub-norm, down.
        st.input.quantize(kernels, &st.x, n, h, &w.ffn_norm, Some(eps));
        matmul::bitlinear_gated(kernels, file, &w.w_gate, &w.w_up, &mut st.input, &mut st.gate, self.gated());
        let (gain, norm_eps) = self.sub_norm(w.ffn_sub_norm.as_deref());
        st.input.quantize(kernels, &st.gate, n, inter, gain, norm_eps);
        matmul::bitlinear(kernels, file, [&w.w_down], &mut st.input, [&mut st.x[..]], [Combine::Add]);
    }

    /// [`layer`](Model::layer) for a model whose every projection normalizes its own input
    /// (SPEC.md §8a): the block's norm (and sub-norms) first, into `st.normed`, then per
    /// projection its own RMSNorm fused with the quantization. q, k and v (and gate and up)
    /// share an input but not a norm gain, so each quantizes its own.
    fn layer_with_input_norms(
        &self,
        st: &mut Scratch,
        l: usize,
        n: usize,
        attend: AttendRows,
        g: &InNorms,
        lin_eps: f32,
    ) {
        let c = &self.config;
        let (h, qd, kvd, inter) = (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize);
        let (kernels, file, eps) = (&self.kernels, self.file.bytes(), c.rms_eps);
        let w = &self.layers[l];
        let lin = Some(lin_eps);

        let x = normed_rows(&mut st.normed, &st.x, n, h, Some(&w.attn_norm), eps);
        for (wt, gain, dst) in
            [(&w.wq, &g.q, &mut st.q[..]), (&w.wk, &g.k, &mut st.k[..]), (&w.wv, &g.v, &mut st.v[..])]
        {
            st.input.quantize(kernels, x, n, h, gain, lin);
            matmul::bitlinear(kernels, file, [wt], &mut st.input, [dst], [Combine::Store]);
        }
        let (q, k, v) = (&mut st.q[..n * qd], &mut st.k[..n * kvd], &st.v[..n * kvd]);
        attend(kernels, l, q, k, v, &mut st.att[..n * qd]);
        let att = normed_rows(&mut st.normed, &st.att, n, qd, w.attn_sub_norm.as_deref(), eps);
        st.input.quantize(kernels, att, n, qd, &g.o, lin);
        matmul::bitlinear(kernels, file, [&w.wo], &mut st.input, [&mut st.x[..]], [Combine::Add]);

        let x = normed_rows(&mut st.normed, &st.x, n, h, Some(&w.ffn_norm), eps);
        st.input.quantize(kernels, x, n, h, &g.gate, lin);
        matmul::bitlinear(kernels, file, [&w.w_gate], &mut st.input, [&mut st.gate[..]], [Combine::Store]);
        st.input.quantize(kernels, x, n, h, &g.up, lin);
        matmul::bitlinear(kernels, file, [&w.w_up], &mut st.input, [&mut st.gate[..]], [self.gated()]);
        let gated = normed_rows(&mut st.normed, &st.gate, n, inter, w.ffn_sub_norm.as_deref(), eps);
        st.input.quantize(kernels, gated, n, inter, &g.down, lin);
        matmul::bitlinear(kernels, file, [&w.w_down], &mut st.input, [&mut st.x[..]], [Combine::Add]);
    }

    /// The gain and epsilon of a sub-norm; without one, a projection quantizes its input
    /// as it is (a gain of ones, no norm).
    fn sub_norm<'a>(&'a self, gain: Option<&'a [f32]>) -> (&'a [f32], Option<f32>) {
        match gain {
            Some(g) => (g, Some(self.config.rms_eps)),
            None => (&self.ones, None),
        }
    }

    /// How the up projection combines with the stored gate: `act(gate) · up`.
    fn gated(&self) -> Combine {
        match self.config.activation {
            Activation::Silu => Combine::GateSilu,
            Activation::ReluSquared => Combine::GateReluSquared,
        }
    }
}

/// The first `n` rows of `src` (each `cols` wide) RMS-normed with `gain` into `normed`, which
/// is returned; without a gain, `src` itself.
fn normed_rows<'a>(
    normed: &'a mut [f32],
    src: &'a [f32],
    n: usize,
    cols: usize,
    gain: Option<&[f32]>,
    eps: f32,
) -> &'a [f32] {
    let Some(gain) = gain else { return src };
    for (o, x) in normed[..n * cols].chunks_mut(cols).zip(src.chunks(cols)) {
        rmsnorm(o, x, gain, eps);
    }
    normed
}

/// Runs layer `layer`'s attention of a step's rows: `(kernels, layer, q, k, v, out)`, as
/// [`Attention::forward`] takes them (the rows' sequences and positions are the caller's).
pub(crate) type AttendRows<'a> = &'a mut dyn FnMut(&Kernels, usize, &mut [f32], &mut [f32], &[f32], &mut [f32]);

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

// ---------------------------------------------------------------------------------------
// Run state

/// Everything that changes during a run, allocated once for a context of `max_seq`
/// positions and prompt chunks of up to `batch` tokens.
pub struct State {
    max_seq: usize,
    batch: usize,
    scratch: Scratch,
    /// The KV cache and what else attention keeps.
    attention: Attention,
}

/// The buffers of one step's rows (tokens of one sequence or of several), allocated once
/// for up to `rows` rows.
pub struct Scratch {
    rows: usize,
    /// The hidden state, one row per token of the chunk.
    x: Vec<f32>,
    /// The final norm of the rows whose logits are wanted, before the output projection.
    xn: Vec<f32>,
    /// The quantized input of the next BitLinear.
    input: Input,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention's output, one row of `q_dim` per token.
    att: Vec<f32>,
    /// The MLP's `act(gate) · up`.
    gate: Vec<f32>,
    /// A block-normed input, for models whose projections norm their input again
    /// (SPEC.md §8a; empty for the others).
    normed: Vec<f32>,
    logits: Vec<f32>,
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
        Ok(State {
            max_seq,
            batch,
            scratch: Scratch::new(config, batch),
            attention: Attention::new(config, max_seq, batch, kv_type)?,
        })
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    pub fn kv_type(&self) -> KvType {
        self.attention.kv_type()
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.attention.cache_bytes()
    }
}

impl Scratch {
    /// Buffers for steps of up to `rows` rows (at least one).
    pub fn new(c: &ModelConfig, rows: usize) -> Self {
        let rows = rows.max(1);
        let (h, qd, kvd, inter, vocab) =
            (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize, c.vocab_size as usize);
        let widest = h.max(qd).max(inter);
        // Products of the widest fused projection: q/k/v or gate/up.
        let products = (qd + 2 * kvd).max(2 * inter).max(h);
        Scratch {
            rows,
            x: vec![0.0; rows * h],
            xn: vec![0.0; rows * h],
            input: Input::new(rows, widest, products),
            q: vec![0.0; rows * qd],
            k: vec![0.0; rows * kvd],
            v: vec![0.0; rows * kvd],
            att: vec![0.0; rows * qd],
            gate: vec![0.0; rows * inter],
            normed: vec![0.0; if c.linear.norm_eps.is_some() { rows * widest } else { 0 }],
            logits: vec![0.0; rows * vocab],
        }
    }

    /// The most rows a step can hold.
    pub fn rows(&self) -> usize {
        self.rows
    }
}
