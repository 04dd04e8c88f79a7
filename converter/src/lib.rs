//! `tern-convert`: a Hugging Face BitNet b1.58 checkpoint folder (or bitnet.cpp's I2_S GGUF
//! file, module `gguf`) -> one `.tern` file.
//!
//! The only place in tern that knows Hugging Face tensor names ([`hf_name`]). The output
//! is written to a temp file of its own beside the output, synced, then renamed over the
//! output (module `output`), so a failed or interrupted conversion never leaves a file at the
//! output path.
#![deny(unsafe_code)]

mod aligned;
#[allow(unsafe_code)] // memory maps: see the SAFETY comments there
mod checkpoint;
mod finite;
pub mod gguf;
mod hf_config;
pub mod interrupt;
mod output;
pub mod output_types;
pub mod packed;
mod paths;
mod quant_config;
mod tokenizer_config;

pub use checkpoint::Checkpoint;
pub use finite::check_finite;
pub use hf_config::parse_config;
pub use output::temp_files;
pub use quant_config::{weight_layout, WeightLayout};

use aligned::AlignedWriter;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use safetensors::Dtype;
use std::io::{Seek, Write};
use std::path::Path;
use std::time::Instant;
use tern_format::names::{self, Expected};
use tern_format::ternary::{self, absmean_scale, pack_row, row_bytes, ternarize};
use tern_format::{Encoding, ModelConfig, ScaleConvention, Shape, TensorSpec, TernWriter};

/// Conversion choices.
#[derive(Debug, Clone)]
pub struct Options {
    /// Encoding of the embedding (and untied output) matrix: f16 (default), f32, q8, q6 or q4
    /// ([`output_types`]).
    pub embed: Encoding,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Sleep this long after each tensor (a test hook for interrupting conversions).
    pub pause_per_tensor: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options { embed: Encoding::F16, progress: true, pause_per_tensor: None }
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub tensors: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
    pub ternary_weights: u64,
    pub zero_weights: u64,
    pub warnings: Vec<String>,
}

impl Summary {
    pub fn zero_fraction(&self) -> f64 {
        self.zero_weights as f64 / self.ternary_weights.max(1) as f64
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tensors, {:.1} MB in -> {:.1} MB out ({:.2}x smaller) in {:.1} s; {:.1}% of {} ternary weights are zero",
            self.tensors,
            self.input_bytes as f64 / 1e6,
            self.output_bytes as f64 / 1e6,
            self.input_bytes as f64 / self.output_bytes.max(1) as f64,
            self.seconds,
            100.0 * self.zero_fraction(),
            self.ternary_weights,
        )
    }
}

/// The Hugging Face name of a `.tern` tensor (1bitLLM naming). Sub-norms have two
/// spellings: 1bitLLM's `inner_attn_ln`/`ffn_layernorm` and the 2B-4T
/// `attn_sub_norm`/`ffn_sub_norm`; the first is tried first.
pub fn hf_name(tern_name: &str) -> Vec<String> {
    match tern_name {
        names::TOKEN_EMBD => return vec!["model.embed_tokens.weight".into()],
        names::OUTPUT_NORM => return vec!["model.norm.weight".into()],
        names::OUTPUT => return vec!["lm_head.weight".into()],
        _ => {}
    }
    let Some((layer, suffix)) = tern_name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
        return vec![];
    };
    let p = format!("model.layers.{layer}");
    // A projection's own input norm and bias (quantization_config.use_rms_norm,
    // attention_bias / mlp_bias): `<linear>.rms_norm.weight` and `<linear>.bias`.
    let (suffix, leaf) = match (suffix.strip_suffix("_in_norm"), suffix.strip_suffix("_bias")) {
        (Some(base), _) => (base, "rms_norm.weight"),
        (_, Some(base)) => (base, "bias"),
        _ => (suffix, "weight"),
    };
    let names: &[&str] = match suffix {
        "attn_norm" => &["input_layernorm"],
        "attn_q" => &["self_attn.q_proj"],
        "attn_k" => &["self_attn.k_proj"],
        "attn_v" => &["self_attn.v_proj"],
        "attn_sub_norm" => &["self_attn.inner_attn_ln", "self_attn.attn_sub_norm"],
        "attn_output" => &["self_attn.o_proj"],
        "ffn_norm" => &["post_attention_layernorm"],
        "ffn_gate" => &["mlp.gate_proj"],
        "ffn_up" => &["mlp.up_proj"],
        "ffn_sub_norm" => &["mlp.ffn_layernorm", "mlp.ffn_sub_norm"],
        "ffn_down" => &["mlp.down_proj"],
        _ => &[],
    };
    let projection =
        matches!(suffix, "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down");
    if leaf != "weight" && !projection {
        return vec![];
    }
    names.iter().map(|n| format!("{p}.{n}.{leaf}")).collect()
}

/// Checkpoint tensors that are known and deliberately not converted.
fn ignored(hf: &str) -> bool {
    hf.ends_with(".rotary_emb.inv_freq")
}

/// One tensor to convert: where it comes from and what it becomes.
struct Planned {
    hf: String,
    spec: TensorSpec,
    source: Source,
}

/// How a planned tensor's values are read.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// F32, F16 or BF16 values (ternary tensors are ternarized with the absmean scale).
    Float,
    /// A pre-packed U8 ternary tensor and its checkpoint `weight_scale`, stored as given.
    Packed { scale: f32 },
    /// The bias of a pre-packed `AutoBitLinear` (offline), which transformers adds before
    /// multiplying by `weight_scale`: stored multiplied by it (`scale`), so that it is
    /// added after the scale as SPEC.md §8a says.
    ScaledBias { scale: f32 },
}

/// Reads and checks `tokenizer.json` (required), returning its bytes.
fn read_tokenizer(dir: &Path, config: &ModelConfig) -> Result<Vec<u8>> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        if dir.join("tokenizer.model").exists() {
            bail!(
                "{}: missing; the folder has only tokenizer.model (SentencePiece). Make a tokenizer.json with \
                 `python -c \"from transformers import AutoTokenizer as T; T.from_pretrained('{d}').save_pretrained('{d}')\"` \
                 and convert again",
                path.display(),
                d = dir.display()
            );
        }
        bail!("{}: missing (tern-convert needs the Hugging Face tokenizer.json)", path.display());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let model = json.get("model").with_context(|| format!("{}: no \"model\" section", path.display()))?;
    // The largest id the tokenizer can produce must index the embedding.
    let vocab_max = match model.get("vocab") {
        Some(serde_json::Value::Object(m)) => m.values().filter_map(|v| v.as_u64()).max(),
        Some(serde_json::Value::Array(a)) => a.len().checked_sub(1).map(|n| n as u64),
        _ => bail!("{}: model.vocab is neither a map nor a list", path.display()),
    };
    let added_max = json
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .and_then(|a| a.iter().filter_map(|t| t.get("id")?.as_u64()).max());
    let max_id = vocab_max.max(added_max).unwrap_or(0);
    if max_id >= u64::from(config.vocab_size) {
        bail!("{}: token id {max_id} does not fit the model's vocab_size {}", path.display(), config.vocab_size);
    }
    Ok(bytes)
}

/// Matches the checkpoint's tensors to the `.tern` tensors of `config`; sets `tied_output`
/// and the sub-norm flags from the tensors; checks each tensor's shape and dtype against
/// `layout`, and reads and checks each pre-packed tensor's `weight_scale`.
fn plan(
    ckpt: &Checkpoint,
    config: &mut ModelConfig,
    tie: Option<bool>,
    layout: WeightLayout,
    opts: &Options,
) -> Result<(Vec<Planned>, Vec<String>)> {
    // Tied when the checkpoint has no lm_head (1bitLLM) or the config says so.
    config.tied_output = tie == Some(true) || ckpt.get("lm_head.weight").is_none();
    // Sub-norms (1bitLLM, 2B-4T: both; the Llama-architecture checkpoints: none) are present
    // when layer 0 has them; every other layer must then have its own.
    let has = |tern: &str| hf_name(tern).iter().any(|n| ckpt.get(n).is_some());
    config.attn_sub_norm = has("blk.0.attn_sub_norm");
    config.ffn_sub_norm = has("blk.0.ffn_sub_norm");
    let mut planned = Vec::new();
    let mut used = std::collections::HashSet::new();
    for Expected { name, shape, encodings } in names::expected_tensors(config) {
        let candidates = hf_name(&name);
        let hf = candidates
            .iter()
            .find(|c| ckpt.get(c).is_some())
            .with_context(|| format!("checkpoint: missing tensor {} (for {name})", candidates.join(" or ")))?
            .clone();
        let ternary = encodings == [Encoding::T2];
        let (mut source, scale_name) = tensor_source(ckpt, &hf, shape, ternary, layout)?;
        if let (Some(weight), WeightLayout::Packed(ScaleConvention::Multiply)) =
            (hf.strip_suffix(".bias").map(|p| format!("{p}.weight")), layout)
        {
            source = Source::ScaledBias { scale: packed_scale(ckpt, &weight)?.1 };
        }
        used.extend(scale_name);
        let encoding = if encodings.contains(&opts.embed) { opts.embed } else { encodings[0] };
        used.insert(hf.clone());
        planned.push(Planned { hf, spec: TensorSpec { name, encoding, shape }, source });
    }
    let mut warnings = Vec::new();
    for name in ckpt.names() {
        if !used.contains(name) && !ignored(name) {
            let why = if name == "lm_head.weight" { " (config ties the output to the embedding)" } else { "" };
            warnings.push(format!("checkpoint tensor {name} is not used{why}"));
        }
    }
    Ok((planned, warnings))
}

/// Checks the checkpoint tensor `hf` against the `.tern` tensor it becomes (`shape`, and
/// whether it is `ternary`) and the checkpoint's `layout`; returns how to read it, and the
/// name of the `weight_scale` tensor it also uses, if any.
fn tensor_source(
    ckpt: &Checkpoint,
    hf: &str,
    shape: Shape,
    ternary: bool,
    layout: WeightLayout,
) -> Result<(Source, Option<String>)> {
    let loc = ckpt.get(hf).expect("planned from the checkpoint");
    let file = ckpt.shard_path(loc).display();
    if let (WeightLayout::Packed(_), Shape::Matrix { rows, cols }, true) = (layout, shape, ternary) {
        let Some(packed_rows) = packed::packed_rows(rows as usize) else {
            bail!("{file}: tensor {hf}: {rows} output rows are not a multiple of 4, so it has no packed form");
        };
        let want = [packed_rows, cols as usize];
        if loc.dtype != Dtype::U8 || loc.shape != want {
            bail!(
                "{file}: tensor {hf} is {:?} {:?}; config.json's quantization_config (pre-packed) and sizes \
                 expect U8 {want:?} (4 ternary weights per byte along the {rows} output rows){}",
                loc.dtype,
                loc.shape,
                if loc.dtype == Dtype::U8 {
                    ""
                } else {
                    ". Float weights are master weights: their config says linear_class \"autobitlinear\" with \
                     quantization_mode \"online\" (transformers does not ternarize float weights in offline mode)"
                }
            );
        }
        let (scale_name, scale) = packed_scale(ckpt, hf)?;
        return Ok((Source::Packed { scale }, Some(scale_name)));
    }
    let want: Vec<usize> = match shape {
        Shape::Vector(n) => vec![n as usize],
        Shape::Matrix { rows, cols } => vec![rows as usize, cols as usize],
    };
    if loc.dtype == Dtype::U8 && ternary {
        bail!(
            "{file}: tensor {hf} is U8 (pre-packed ternary) but config.json has no quantization_config \
             with quant_method \"bitnet\" saying how it is packed and scaled (quantization_mode \"online\" \
             means float master weights, ternarized at every call)"
        );
    }
    if loc.shape != want {
        bail!("{file}: tensor {hf} has shape {:?}, expected {want:?} from config.json", loc.shape);
    }
    if !matches!(loc.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        bail!("{file}: tensor {hf} has dtype {:?}; tern-convert reads F32, F16 and BF16", loc.dtype);
    }
    Ok((Source::Float, None))
}

/// The `weight_scale` beside the packed weight `hf` (`….weight`): its name and value, a
/// positive finite number stored as a one-element F32, F16 or BF16 tensor ([1] or []).
fn packed_scale(ckpt: &Checkpoint, hf: &str) -> Result<(String, f32)> {
    let name = format!("{}_scale", hf);
    let loc = ckpt
        .get(&name)
        .with_context(|| format!("checkpoint: missing tensor {name} (the scale of the packed weight {hf})"))?;
    let file = ckpt.shard_path(loc).display();
    if !(loc.shape.is_empty() || loc.shape == [1]) {
        bail!("{file}: tensor {name} has shape {:?}, expected [1] (one scale per weight matrix)", loc.shape);
    }
    // read_f32 checks the dtype and that the value is finite.
    let value = ckpt.read_f32(&name, loc)?[0];
    if value <= 0.0 {
        bail!("{file}: tensor {name} is {value}; a weight scale must be positive");
    }
    Ok((name, value))
}

/// Reads one planned tensor and converts it into its `.tern` bytes and scale; counts zero
/// weights. Pre-packed weights keep their values and their checkpoint scale.
fn convert_tensor(ckpt: &Checkpoint, p: &Planned) -> Result<(Vec<u8>, f32, u64)> {
    let loc = ckpt.get(&p.hf).expect("planned from the checkpoint");
    match p.source {
        Source::Float => encode(&ckpt.read_f32(&p.hf, loc)?, &p.spec, &p.hf),
        Source::ScaledBias { scale } => {
            let values: Vec<f32> = ckpt.read_f32(&p.hf, loc)?.iter().map(|b| b * scale).collect();
            encode(&values, &p.spec, &p.hf)
        }
        Source::Packed { scale } => {
            let Shape::Matrix { rows, cols } = p.spec.shape else { unreachable!("packed tensors are matrices") };
            let bytes = ckpt.read_u8(&p.hf, loc)?;
            let (t2, zeros) = packed::to_t2(&bytes, rows as usize, cols as usize).map_err(|e| {
                anyhow!(
                    "{}: tensor {}: code 3 (not a ternary weight) at row {} column {}",
                    ckpt.shard_path(loc).display(),
                    p.hf,
                    e.row,
                    e.col
                )
            })?;
            Ok((t2, scale, zeros))
        }
    }
}

/// Converts one tensor's f32 values into its `.tern` bytes and scale; counts zero weights.
pub(crate) fn encode(values: &[f32], spec: &TensorSpec, hf: &str) -> Result<(Vec<u8>, f32, u64)> {
    if spec.encoding != Encoding::T2 {
        check_finite(hf, values)?;
    }
    match spec.encoding {
        Encoding::F32 => Ok((values.iter().flat_map(|v| v.to_le_bytes()).collect(), 1.0, 0)),
        Encoding::F16 => {
            if let Some(i) = values.iter().position(|v| v.abs() > f32::from(half::f16::MAX)) {
                bail!("tensor {hf}: value {} at index {i} does not fit f16; convert with --output-type f32", values[i]);
            }
            Ok((values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(), 1.0, 0))
        }
        Encoding::Q8 => {
            let Shape::Matrix { cols, .. } = spec.shape else { unreachable!("q8 tensors are matrices") };
            Ok((quantize_q8(values, cols as usize), 1.0, 0))
        }
        Encoding::Q6 | Encoding::Q4 => {
            let Shape::Matrix { cols, .. } = spec.shape else { unreachable!("q6/q4 tensors are matrices") };
            Ok((output_types::quantize_blocks(spec.encoding, values, cols as usize, hf)?, 1.0, 0))
        }
        Encoding::T2 => {
            let Shape::Matrix { cols, .. } = spec.shape else { unreachable!("t2 tensors are matrices") };
            let cols = cols as usize;
            let scale = absmean_scale(values);
            let rb = row_bytes(cols);
            let mut packed = vec![0u8; values.len() / cols * rb];
            let zeros: u64 = packed
                .par_chunks_mut(rb)
                .zip(values.par_chunks(cols))
                .map_init(
                    || vec![0i8; cols],
                    |q, (out, row)| {
                        ternarize(row, scale, q);
                        pack_row(q, out);
                        q.iter().filter(|&&w| w == 0).count() as u64
                    },
                )
                .sum();
            Ok((packed, scale, zeros))
        }
    }
}

/// Per-row symmetric int8: all row scales (`max|row| / 127`, f32), then the int8 rows.
pub fn quantize_q8(values: &[f32], cols: usize) -> Vec<u8> {
    let rows = values.len() / cols;
    let mut out = vec![0u8; rows * 4 + rows * cols];
    let (scales, q) = out.split_at_mut(rows * 4);
    for ((row, s), qr) in values.chunks(cols).zip(scales.chunks_mut(4)).zip(q.chunks_mut(cols)) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        s.copy_from_slice(&scale.to_le_bytes());
        for (o, &v) in qr.iter_mut().zip(row) {
            *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
        }
    }
    out
}

/// Converts the checkpoint folder `input` into the `.tern` file `output`.
/// A `.gguf` file (or any file that starts with `GGUF`) is imported as bitnet.cpp's I2_S GGUF.
pub fn convert(input: &Path, output: &Path, opts: &Options) -> Result<Summary> {
    let start = Instant::now();
    if gguf::is_gguf(input) {
        return gguf::convert(input, output, opts);
    }
    paths::check_input(input)?;
    paths::check_output(input, output)?;
    let parsed = hf_config::read_config(input)?;
    let mut config = parsed.config;
    let ckpt = Checkpoint::open(input)?;
    let (planned, warnings) = plan(&ckpt, &mut config, parsed.tie_word_embeddings, parsed.layout, opts)?;
    let tokenizer = read_tokenizer(input, &config)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }

    let specs: Vec<TensorSpec> = planned.iter().map(|p| p.spec.clone()).collect();
    let (output_bytes, (ternary_weights, zero_weights)) =
        write_atomically(output, &config, &tokenizer, &specs, |i| convert_tensor(&ckpt, &planned[i]), opts)?;
    Ok(Summary {
        tensors: planned.len(),
        input_bytes: ckpt.data_bytes(),
        output_bytes,
        seconds: start.elapsed().as_secs_f64(),
        ternary_weights,
        zero_weights,
        warnings,
    })
}

/// Writes the `.tern` file `output` through its temp file (removed on an error) and renames
/// it into place; returns its size and the (ternary, zero) weight counts.
pub(crate) fn write_atomically(
    output: &Path,
    config: &ModelConfig,
    tokenizer: &[u8],
    specs: &[TensorSpec],
    tensor: impl Fn(usize) -> Result<(Vec<u8>, f32, u64)>,
    opts: &Options,
) -> Result<(u64, (u64, u64))> {
    // Dropped on an error, `out` removes its temp file.
    let (out, file) = output::AtomicOutput::create(output)?;
    let (counts, file) = write_all(AlignedWriter::new(file), config, tokenizer, specs, tensor, opts)
        .and_then(|(w, counts)| Ok((counts, w.into_inner()?)))
        .with_context(|| format!("writing {} (to its temp file {})", output.display(), out.temp_path().display()))?;
    let output_bytes = file.metadata()?.len();
    out.commit(file)?;
    Ok((output_bytes, counts))
}

/// Streams every tensor of `specs` into `out`, the bytes, scale and zero count of tensor `i`
/// made by `tensor(i)`; returns the writer and (ternary, zero) weight counts.
pub(crate) fn write_all<W: Write + Seek>(
    out: W,
    config: &ModelConfig,
    tokenizer: &[u8],
    specs: &[TensorSpec],
    tensor: impl Fn(usize) -> Result<(Vec<u8>, f32, u64)>,
    opts: &Options,
) -> Result<(W, (u64, u64))> {
    let mut writer = TernWriter::new(out, config, tokenizer, specs)?;
    let bar = if opts.progress { ProgressBar::new(specs.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {elapsed} {msg}").expect("valid template"),
    );
    let (mut ternary_weights, mut zero_weights) = (0u64, 0u64);
    for (i, spec) in specs.iter().enumerate() {
        bar.set_message(spec.name.clone());
        let (bytes, scale, zeros) = tensor(i)?;
        if spec.encoding == Encoding::T2 {
            ternary_weights += spec.shape.elements().unwrap_or(0);
            zero_weights += zeros;
        }
        writer.write_tensor(&bytes, scale)?;
        bar.inc(1);
        if let Some(pause) = opts.pause_per_tensor {
            std::thread::sleep(pause);
        }
    }
    bar.finish_and_clear();
    Ok((writer.finish()?, (ternary_weights, zero_weights)))
}

/// Unpacks a `t2` tensor back to one i8 per weight (row-major, unpadded): for tests and tools.
pub fn unpack_matrix(data: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, String> {
    let rb = ternary::row_bytes(cols);
    let mut out = vec![0i8; rows * cols];
    for (r, row) in out.chunks_mut(cols).enumerate() {
        ternary::unpack_row(&data[r * rb..(r + 1) * rb], row)
            .map_err(|c| format!("invalid code at row {r} column {c}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, SeekFrom};

    /// A disk that fills up after `room` bytes.
    struct FullDisk {
        inner: Cursor<Vec<u8>>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.inner.get_ref().len() + buf.len() > self.room {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn disk_full_is_reported() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-tied");
        let parsed = hf_config::read_config(&dir).unwrap();
        let mut config = parsed.config;
        let ckpt = Checkpoint::open(&dir).unwrap();
        let opts = Options { embed: Encoding::F16, progress: false, pause_per_tensor: None };
        let (planned, _) = plan(&ckpt, &mut config, None, parsed.layout, &opts).unwrap();
        let tok = read_tokenizer(&dir, &config).unwrap();
        for room in [100, 20_000, 100_000] {
            let disk = FullDisk { inner: Cursor::new(Vec::new()), room };
            let specs: Vec<TensorSpec> = planned.iter().map(|p| p.spec.clone()).collect();
            let tensor = |i| convert_tensor(&ckpt, &planned[i]);
            let err = write_all(disk, &config, &tok, &specs, tensor, &opts).err().expect("must fail");
            assert!(format!("{err:#}").contains("No space left on device"), "{err:#}");
        }
    }
}
