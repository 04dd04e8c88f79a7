//! bitnet.cpp's I2_S GGUF file -> one `.tern` file: `tern-convert FILE.gguf -o m.tern`.
//!
//! The only place in tern that knows GGUF tensor names (tern's own names are GGUF's without
//! the `.weight` suffix). The ternary values and each tensor's scale are copied as given
//! (weights_source `I2sGguf`, scale convention multiply); the tokenizer is rebuilt from the
//! metadata ([`tokenizer`]).

mod container;
mod i2s;
mod model_config;
mod tokenizer;

pub use container::{type_name, Gguf, TensorInfo, Value};

use crate::{encode, write_atomically, Options, Summary};
use anyhow::{bail, Context, Result};
use container::{BF16, F16, F32, I2_S};
use memmap2::Mmap;
use model_config::GgufArch;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;
use tern_format::names::{self, Expected};
use tern_format::{Encoding, ModelConfig, Shape, TensorSpec, MAX_EXTRA_EOS};

/// Whether `input` is a GGUF file: named `.gguf`, or a regular file starting with `GGUF`.
pub fn is_gguf(input: &Path) -> bool {
    use std::io::Read;
    if !std::fs::metadata(input).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 4];
    let magic = std::fs::File::open(input).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"GGUF";
    magic || input.extension().is_some_and(|e| e == "gguf")
}

/// Where one `.tern` tensor comes from.
struct Planned {
    spec: TensorSpec,
    tensor: TensorInfo,
    /// For q/k of a `llama` file: the head dimension of llama.cpp's row permutation.
    unpermute: Option<usize>,
}

/// What the file is, checked, and every tensor planned: the config, the tokenizer and the
/// plan; warnings for tensors left unused.
struct Import {
    config: ModelConfig,
    tokenizer: Vec<u8>,
    planned: Vec<Planned>,
    warnings: Vec<String>,
}

fn import(g: &Gguf, opts: &Options) -> Result<Import> {
    let (arch_name, arch) = model_config::arch(g)?;
    let tok = tokenizer::rebuild(g, arch == GgufArch::Bitnet)?;
    let embd = g.tensor("token_embd.weight").context("tensor token_embd.weight: missing")?;
    let [_, vocab] = embd.dims[..] else {
        bail!("tensor token_embd.weight: dimensions {:?} (expected [hidden, vocab])", embd.dims);
    };
    let vocab = u32::try_from(vocab).context("tensor token_embd.weight: vocabulary too large")?;
    if let Some(v) = g.get(&format!("{arch_name}.vocab_size")) {
        if v.as_u64() != Some(u64::from(vocab)) {
            bail!("metadata key {arch_name}.vocab_size: {v:?}, but token_embd.weight has {vocab} rows");
        }
    }
    if tok.n_tokens > vocab as usize {
        bail!("metadata key tokenizer.ggml.tokens: {} tokens for an embedding of {vocab} rows", tok.n_tokens);
    }
    let mut config = model_config::model_config(g, &arch_name, arch, vocab)?;
    config.attn_sub_norm = g.tensor("blk.0.attn_sub_norm.weight").is_some();
    config.ffn_sub_norm = g.tensor("blk.0.ffn_sub_norm.weight").is_some();
    config.tied_output = g.tensor("output.weight").is_none();
    config.bos_id = tok.bos_id;
    if let Some((&first, rest)) = tok.eos_ids.split_first() {
        config.eos_id = Some(first);
        config.extra_eos = rest.iter().copied().take(MAX_EXTRA_EOS).collect();
    }
    config.pad_id = tok.pad_id;
    config.chat.chat_template = tok.chat_template;
    config.chat.bos_token = tok.bos_token;
    config.chat.eos_token = tok.eos_token;
    config.validate().context("the GGUF file describes an inconsistent model")?;

    let mut planned = Vec::new();
    for Expected { name, shape, encodings } in names::expected_tensors(&config) {
        let gguf_name = format!("{name}.weight");
        let t = g.tensor(&gguf_name).with_context(|| format!("tensor {gguf_name}: missing (for {name})"))?;
        let want: Vec<u64> = match shape {
            Shape::Vector(n) => vec![n],
            Shape::Matrix { rows, cols } => vec![cols, rows],
        };
        if t.dims != want {
            bail!("tensor {gguf_name}: dimensions {:?}, expected {want:?} (ne0 first) from the metadata", t.dims);
        }
        let ternary = encodings == [Encoding::T2];
        match (ternary, t.ggml_type) {
            (true, I2_S) => {}
            (false, F32 | F16 | BF16) => {}
            (true, other) => bail!(
                "tensor {gguf_name}: {}; tern-convert imports I2_S ternary weights (bitnet.cpp's x86 layout) only: \
                 convert from the Hugging Face checkpoint instead",
                type_name(other)
            ),
            (false, other) => bail!(
                "tensor {gguf_name}: {}; tern-convert reads embeddings, norms and the output as F32, F16 or BF16: \
                 convert from the Hugging Face checkpoint instead",
                type_name(other)
            ),
        }
        if ternary && t.room as u64 > (t.elements / 4 + 32).div_ceil(g.alignment) * g.alignment {
            bail!(
                "tensor {gguf_name}: I2_S data of {} bytes before the next tensor, expected n/4 + 32 = {} for {} \
                 weights (bitnet.cpp's x86 128-weight block layout)",
                t.room,
                t.elements / 4 + 32,
                t.elements
            );
        }
        let unpermute = match (arch.permuted_qk(), name.rsplit('.').next()) {
            (true, Some("attn_q" | "attn_k")) => Some(config.head_dim as usize),
            _ => None,
        };
        let encoding = if encodings.contains(&opts.embed) { opts.embed } else { encodings[0] };
        planned.push(Planned { spec: TensorSpec { name, encoding, shape }, tensor: t.clone(), unpermute });
    }
    let mut warnings = Vec::new();
    let used: std::collections::HashSet<&str> = planned.iter().map(|p| p.tensor.name.as_str()).collect();
    for t in &g.tensors {
        if used.contains(t.name.as_str()) {
            continue;
        }
        // A scale tensor beside a weight (bitnet.cpp's TL1/TL2 files), a bias or RoPE
        // frequency factors would change the arithmetic: refused rather than ignored.
        if t.name.ends_with("_scale")
            || t.name.ends_with("_scale.weight")
            || t.name.ends_with(".bias")
            || t.name == "rope_freqs.weight"
        {
            bail!("tensor {}: not supported (it would change the model's arithmetic)", t.name);
        }
        warnings.push(format!("GGUF tensor {} is not used", t.name));
    }
    Ok(Import { config, tokenizer: tok.json, planned, warnings })
}

/// The f32 values of a float tensor.
fn floats(name: &str, t: &TensorInfo, data: &[u8]) -> Result<Vec<f32>> {
    let v: Vec<f32> = match t.ggml_type {
        F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => bail!("tensor {name}: {} is not a float type", type_name(other)),
    };
    Ok(v)
}

/// One planned tensor's `.tern` bytes, scale and zero count.
fn convert_tensor(g: &Gguf, p: &Planned) -> Result<(Vec<u8>, f32, u64)> {
    let t = &p.tensor;
    let data = g.data(t).expect("planned tensors have a known size");
    if t.ggml_type != I2_S {
        return encode(&floats(&t.name, t, data)?, &p.spec, &t.name);
    }
    let Shape::Matrix { rows, cols } = p.spec.shape else { unreachable!("I2_S tensors are planned as matrices") };
    let d = match p.unpermute {
        None => i2s::decode(&t.name, data, rows as usize, cols as usize, &|r| r)?,
        Some(head_dim) => {
            if !(rows as usize).is_multiple_of(head_dim) {
                bail!("tensor {}: {rows} rows are not whole heads of {head_dim}", t.name);
            }
            i2s::decode(&t.name, data, rows as usize, cols as usize, &|r| i2s::unpermuted_row(r, head_dim))?
        }
    };
    Ok((d.t2, d.scale, d.zeros))
}

/// Converts the GGUF file `input` into the `.tern` file `output`.
pub fn convert(input: &Path, output: &Path, opts: &Options) -> Result<Summary> {
    let start = Instant::now();
    let at = || format!("{}", input.display());
    check_output(input, output)?;
    let file = std::fs::File::open(input).with_context(|| format!("{}: cannot open", at()))?;
    let map = map(&file).with_context(|| format!("{}: cannot map", at()))?;
    let g = Gguf::parse(&map).with_context(|| format!("{}: not a GGUF file tern-convert can read", at()))?;
    let imp = import(&g, opts).with_context(at)?;
    for w in &imp.warnings {
        eprintln!("warning: {w}");
    }
    let specs: Vec<TensorSpec> = imp.planned.iter().map(|p| p.spec.clone()).collect();
    let convert = |i: usize| convert_tensor(&g, &imp.planned[i]).with_context(at);
    let (output_bytes, (ternary_weights, zero_weights)) =
        write_atomically(output, &imp.config, &imp.tokenizer, &specs, convert, opts)?;
    Ok(Summary {
        tensors: specs.len(),
        input_bytes: map.len() as u64,
        output_bytes,
        seconds: start.elapsed().as_secs_f64(),
        ternary_weights,
        zero_weights,
        warnings: imp.warnings,
    })
}

#[allow(unsafe_code)]
fn map(file: &std::fs::File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process, and every read of it is
    // bounds-checked by `Gguf::parse`. If another process truncates the file while we read
    // it, reads past the new end raise SIGBUS: the documented hazard of mapping a file, as
    // for the safetensors reader (checkpoint.rs).
    unsafe { Mmap::map(file) }
}

/// The output may not be the input file itself; otherwise as for a checkpoint folder.
fn check_output(input: &Path, output: &Path) -> Result<()> {
    let parent = input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::paths::check_output(parent, output)?;
    if let (Ok(i), Ok(o)) = (std::fs::metadata(input), std::fs::metadata(output)) {
        if i.dev() == o.dev() && i.ino() == o.ino() {
            bail!("{}: is the input GGUF file; writing there would destroy it: give another path", output.display());
        }
    }
    Ok(())
}
