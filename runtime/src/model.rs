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
//! changes while running lives in [`State`], allocated once. Prompts run in chunks of up
//! to [`State`]'s batch size, layer by layer, so each weight row is used for every token
//! of the chunk; a single token is a chunk of one and takes the very same code path.

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
            layers.push(Layer {
                attn_norm: floats(get(BlockTensor::AttnNorm)?),
                wq: Ternary::new(get(BlockTensor::AttnQ)?, config.scale_convention),
                wk: Ternary::new(get(BlockTensor::AttnK)?, config.scale_convention),
                wv: Ternary::new(get(BlockTensor::AttnV)?, config.scale_convention),
                attn_sub_norm: norm(BlockTensor::AttnSubNorm)?,
                wo: Ternary::new(get(BlockTensor::AttnOutput)?, config.scale_convention),
                ffn_norm: floats(get(BlockTensor::FfnNorm)?),
                w_gate: Ternary::new(get(BlockTensor::FfnGate)?, config.scale_convention),
                w_up: Ternary::new(get(BlockTensor::FfnUp)?, config.scale_convention),
                ffn_sub_norm: norm(BlockTensor::FfnSubNorm)?,
                w_down: Ternary::new(get(BlockTensor::FfnDown)?, config.scale_convention),
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
        let (kernels, file, eps) = (&self.kernels, self.file.bytes(), c.rms_eps);
        let w = &self.layers[l];

        // Attention: norm, q/k/v from one quantized input, attention (RoPE, KV cache),
        // sub-norm, o.
        st.input.quantize(kernels, &st.x, n, h, &w.attn_norm, Some(eps));
        let qkv = [&mut st.q[..], &mut st.k[..], &mut st.v[..]];
        matmul::bitlinear(kernels, file, [&w.wq, &w.wk, &w.wv], &mut st.input, qkv, [Combine::Store; 3]);
        let (q, k, v) = (&mut st.q[..n * qd], &mut st.k[..n * kvd], &st.v[..n * kvd]);
        st.attention.forward(kernels, l, p0, q, k, v, &mut st.att[..n * qd]);
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
    /// The hidden state, one row per token of the chunk.
    x: Vec<f32>,
    /// The final norm of one token, before the output projection.
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
    /// The KV cache and what else attention keeps.
    attention: Attention,
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
        let c = config;
        let (h, qd, kvd, inter, vocab) =
            (c.hidden_size as usize, c.q_dim(), c.kv_dim(), c.intermediate_size as usize, c.vocab_size as usize);
        let widest = h.max(qd).max(inter);
        // Products of the widest fused projection: q/k/v or gate/up.
        let rows = (qd + 2 * kvd).max(2 * inter).max(h);
        Ok(State {
            max_seq,
            batch,
            x: vec![0.0; batch * h],
            xn: vec![0.0; h],
            input: Input::new(batch, widest, rows),
            q: vec![0.0; batch * qd],
            k: vec![0.0; batch * kvd],
            v: vec![0.0; batch * kvd],
            att: vec![0.0; batch * qd],
            gate: vec![0.0; batch * inter],
            attention: Attention::new(c, max_seq, batch, kv_type)?,
            logits: vec![0.0; batch * vocab],
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
