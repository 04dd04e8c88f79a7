//! `tern-convert FILE.gguf`: bitnet.cpp's I2_S GGUF files (fixtures/gguf, written by
//! scripts/make_gguf.py). The `.tern` tensors equal those converted from the same weights in
//! safetensors; every input the importer cannot read exactly is refused by name, and no
//! truncated or corrupted file makes it panic. (Logits and tokenizer: runtime/tests/gguf.rs.)

#[path = "support/gguf_file.rs"]
mod gguf_file;

use gguf_file::File;
use std::path::{Path, PathBuf};
use tern_convert::gguf::Value;
use tern_convert::{convert, Options};
use tern_format::{ScaleConvention, TernFile, WeightsSource};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(p)
}

const BITNET: &str = "gguf/bitnet-2b-tiny.i2_s.gguf";
const FALCON_E: &str = "gguf/falcon-e-tiny.i2_s.gguf";

fn opts() -> Options {
    Options { progress: false, ..Default::default() }
}

/// Converts `bytes` written as a `.gguf` file in `dir`; the error text on failure.
fn convert_bytes(bytes: &[u8], dir: &Path) -> Result<PathBuf, String> {
    let input = dir.join("m.gguf");
    std::fs::write(&input, bytes).unwrap();
    let out = dir.join("m.tern");
    convert(&input, &out, &opts()).map(|_| out).map_err(|e| format!("{e:#}"))
}

fn edited(fixture_path: &str, edit: impl FnOnce(&mut File)) -> Vec<u8> {
    let mut f = File::read(&std::fs::read(fixture(fixture_path)).unwrap());
    edit(&mut f);
    f.write()
}

fn refused(bytes: &[u8], want: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let err = convert_bytes(bytes, d.path()).expect_err("must be refused");
    for w in want {
        assert!(err.contains(w), "{err}\n  does not say: {w}");
    }
    assert!(!d.path().join("m.tern").exists());
}

/// Every tensor of the GGUF conversion equals the safetensors conversion's: the same bytes,
/// and the same factor multiplying `dot / s_x` (for the Falcon-E-style file, whose q/k rows
/// llama.cpp permuted, this proves the permutation undone).
#[test]
fn gguf_tensors_equal_the_safetensors_conversion() {
    let d = tempfile::tempdir().unwrap();
    for (gguf, folder, convention) in
        [(BITNET, "bitnet-2b-tiny", ScaleConvention::Multiply), (FALCON_E, "falcon3-tiny", ScaleConvention::Divide)]
    {
        let (a, b) = (d.path().join("a.tern"), d.path().join("b.tern"));
        convert(&fixture(gguf), &a, &opts()).unwrap();
        convert(&fixture(folder), &b, &opts()).unwrap();
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        let (a, b) = (TernFile::parse(&a).unwrap(), TernFile::parse(&b).unwrap());
        a.verify().unwrap();
        let (ca, cb) = (a.config(), b.config());
        assert_eq!((ca.weights_source, ca.scale_convention), (WeightsSource::I2sGguf, ScaleConvention::Multiply));
        assert_eq!(cb.scale_convention, convention);
        assert_eq!(
            (ca.activation, ca.attn_sub_norm, ca.ffn_sub_norm, ca.tied_output, ca.head_dim, ca.n_kv_heads),
            (cb.activation, cb.attn_sub_norm, cb.ffn_sub_norm, cb.tied_output, cb.head_dim, cb.n_kv_heads),
            "{gguf}"
        );
        assert_eq!((ca.rope_theta, ca.rms_eps, ca.max_positions), (cb.rope_theta, cb.rms_eps, cb.max_positions));
        assert_eq!(a.tensors().len(), b.tensors().len());
        for (ia, ib) in a.tensors().iter().zip(b.tensors()) {
            let name = &ia.name;
            assert_eq!(name, &ib.name);
            let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
            assert!(ta.data == tb.data, "{gguf}: tensor {name} differs");
            let (ma, mb) = (ca.scale_convention.multiplier(ta.info.scale), convention.multiplier(tb.info.scale));
            assert_eq!(ma.to_bits(), mb.to_bits(), "{gguf}: tensor {name} scale {ma} vs {mb}");
        }
    }
}

#[test]
fn other_weight_types_are_refused_by_name() {
    for (t, name) in [(37, "I8_S"), (38, "TL1"), (39, "TL2"), (2, "Q4_0"), (35, "TQ2_0")] {
        let bytes = edited(BITNET, |f| f.tensor("blk.1.ffn_up.weight").ggml_type = t);
        let what = format!("tensor blk.1.ffn_up.weight: {name} (ggml type {t}); tern-convert imports I2_S");
        refused(&bytes, &[&what, "convert from the Hugging Face checkpoint instead"]);
    }
    let bytes = edited(FALCON_E, |f| f.tensor("token_embd.weight").ggml_type = 8);
    refused(&bytes, &["tensor token_embd.weight: Q8_0 (ggml type 8); tern-convert reads embeddings"]);
}

#[test]
fn i2s_data_that_is_not_the_x86_block_layout_is_refused() {
    // 64 bytes more than n/4 + 32 before the next tensor.
    let bytes = edited(BITNET, |f| f.tensor("blk.0.attn_k.weight").data.extend_from_slice(&[0; 64]));
    refused(
        &bytes,
        &["tensor blk.0.attn_k.weight: I2_S data of 12896 bytes before the next tensor, expected n/4 + 32 = 12832"],
    );
    // 32 bytes short: the next tensor starts inside it.
    let bytes = edited(BITNET, |f| {
        let t = f.tensor("blk.0.attn_k.weight");
        t.data.truncate(t.data.len() - 64);
    });
    refused(&bytes, &["tensor blk.0.attn_k.weight: I2_S (ggml type 36) with 51200 elements needs 12832 bytes"]);
    // A code 3 is not a ternary weight.
    let bytes = edited(FALCON_E, |f| f.tensor("blk.2.ffn_down.weight").data[100] |= 0b1100);
    // Byte 100 = block 3, byte 4: bits 2-3 hold element 3·128 + 64 + 4 = 452.
    refused(&bytes, &["tensor blk.2.ffn_down.weight: code 3 (not a ternary weight) at row 0 column 452"]);
    let bytes = edited(FALCON_E, |f| {
        let t = f.tensor("blk.0.attn_v.weight");
        let n = t.data.len() - 32;
        t.data[n..n + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
    });
    refused(&bytes, &["tensor blk.0.attn_v.weight: I2_S scale -1", "is not a positive number"]);
}

#[test]
fn unsupported_architectures_and_tokenizers_are_refused_by_name() {
    let arch = |a: &str| edited(BITNET, |f| f.set("general.architecture", Value::Str(a.into())));
    refused(&arch("bitnet"), &["general.architecture \"bitnet\" is not supported", "Hugging Face checkpoint instead"]);
    refused(&arch("qwen2"), &["general.architecture \"qwen2\" is not supported"]);
    let pre = edited(FALCON_E, |f| f.set("tokenizer.ggml.pre", Value::Str("qwen2".into())));
    refused(
        &pre,
        &[
            "metadata key tokenizer.ggml.pre: \"qwen2\" is not supported",
            "llama-bpe, llama3, llama-v3, falcon3, falcon_e",
        ],
    );
    // Only bitnet.cpp's own bitnet-b1.58 files may lack .pre (their model's split is known).
    let no_pre = edited(FALCON_E, |f| f.remove("tokenizer.ggml.pre"));
    refused(&no_pre, &["metadata key tokenizer.ggml.pre: missing"]);
    let spm = edited(BITNET, |f| f.set("tokenizer.ggml.model", Value::Str("llama".into())));
    refused(&spm, &["metadata key tokenizer.ggml.model: \"llama\"", "byte-level BPE"]);
    let scaled = edited(FALCON_E, |f| f.set("llama.rope.scaling.type", Value::Str("yarn".into())));
    refused(&scaled, &["metadata key llama.rope.scaling.type: RoPE scaling \"yarn\" is not supported"]);
    let partial = edited(FALCON_E, |f| f.set("llama.rope.dimension_count", Value::U32(24)));
    refused(&partial, &["metadata key llama.rope.dimension_count", "partial RoPE is not supported"]);
    let missing = edited(BITNET, |f| f.remove("bitnet-b1.58.attention.layer_norm_rms_epsilon"));
    refused(&missing, &["metadata key bitnet-b1.58.attention.layer_norm_rms_epsilon: missing"]);
    let no_norm = edited(BITNET, |f| f.tensors.retain(|t| t.name != "blk.2.ffn_sub_norm.weight"));
    refused(&no_norm, &["tensor blk.2.ffn_sub_norm.weight: missing"]);
}

#[test]
fn the_input_file_is_never_the_output() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m.gguf");
    std::fs::copy(fixture(BITNET), &input).unwrap();
    let err = format!("{:#}", convert(&input, &input, &opts()).unwrap_err());
    assert!(err.contains("writing there would destroy"), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), std::fs::read(fixture(BITNET)).unwrap());
    std::fs::write(&input, b"not a gguf file at all").unwrap();
    let err = format!("{:#}", convert(&input, &d.path().join("o.tern"), &opts()).unwrap_err());
    assert!(err.contains("m.gguf: not a GGUF file tern-convert can read: not a GGUF file"), "{err}");
}

/// Truncated anywhere, or with bytes flipped in its header, metadata or tensor infos, a
/// GGUF file converts to an error (or, for harmless flips, a valid file): never a panic.
#[test]
fn truncated_or_corrupted_files_never_panic() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture(FALCON_E)).unwrap();
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(7919).collect();
    cuts.extend([3, 4, 8, 16, 24, 25, bytes.len() - 1]);
    for n in cuts {
        let err = convert_bytes(&bytes[..n], d.path()).err().unwrap_or_else(|| panic!("{n} bytes converted"));
        assert!(err.contains("m.gguf: "), "{err}");
    }
    let header_end = 24 + File::read(&bytes).kv.len() * 16; // well inside the metadata
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..150 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = (rng as usize) % (header_end * 40).min(bytes.len());
        let mut bad = bytes.clone();
        bad[at] ^= 1 << (rng >> 61);
        if let Ok(out) = convert_bytes(&bad, d.path()) {
            TernFile::parse(&std::fs::read(out).unwrap()).unwrap().verify().unwrap();
        }
    }
}

/// Float tensors may be F32 as well as F16 (or BF16): the same values give the same file.
#[test]
fn f32_embedding_and_norms_import_the_same() {
    let d = tempfile::tempdir().unwrap();
    let bytes = edited(FALCON_E, |f| {
        for name in ["token_embd.weight", "output.weight"] {
            let t = f.tensor(name);
            assert_eq!(t.ggml_type, 1);
            t.data = t
                .data
                .chunks_exact(2)
                .flat_map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
                .collect();
            t.ggml_type = 0;
        }
    });
    let a = convert_bytes(&bytes, d.path()).unwrap();
    let b = d.path().join("b.tern");
    convert(&fixture(FALCON_E), &b, &opts()).unwrap();
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "the two .tern files differ");
}

/// The older 2B-4T upload: architecture `bitnet-25`, with an `output.weight` (untied).
#[test]
fn bitnet_25_with_an_output_matrix() {
    let d = tempfile::tempdir().unwrap();
    let bytes = edited(BITNET, |f| {
        for (k, v) in f.kv.iter_mut() {
            if let Some(rest) = k.strip_prefix("bitnet-b1.58.") {
                *k = format!("bitnet-25.{rest}");
            }
            if k == "general.architecture" {
                *v = Value::Str("bitnet-25".into());
            }
        }
        let embd = f.tensor("token_embd.weight");
        let output = gguf_file::Tensor { name: "output.weight".into(), ..embd.clone() };
        f.tensors.push(output);
    });
    let out = convert_bytes(&bytes, d.path()).unwrap();
    let bytes = std::fs::read(out).unwrap();
    let file = TernFile::parse(&bytes).unwrap();
    assert!(!file.config().tied_output);
    assert_eq!(file.config().activation, tern_format::Activation::ReluSquared);
    assert!(file.tensor("output").unwrap().data == file.tensor("token_embd").unwrap().data);
}

/// The Falcon-E-style fixture's q/k rows really are in llama.cpp's permuted order (so the
/// equality above tests the un-permute): its I2_S row 2i + t of each head is Hugging Face's
/// row t·d/2 + i, and row r is not row r.
#[test]
fn falcon_e_fixture_rows_are_permuted() {
    let d = tempfile::tempdir().unwrap();
    let st = d.path().join("st.tern");
    convert(&fixture("falcon3-tiny"), &st, &opts()).unwrap();
    let st = std::fs::read(st).unwrap();
    let st = TernFile::parse(&st).unwrap();
    let gguf = File::read(&std::fs::read(fixture(FALCON_E)).unwrap());
    let (head_dim, cols) = (48, 320);
    for (name, rows) in [("blk.0.attn_q", 384), ("blk.1.attn_k", 192)] {
        let hf = tern_convert::unpack_matrix(st.tensor(name).unwrap().data, rows, cols).unwrap();
        let i2s = &gguf.tensors.iter().find(|t| t.name == format!("{name}.weight")).unwrap().data;
        // I2_S: element e in block e/128, byte e%32 of it, shift 6 - 2·((e%128)/32); code w + 1.
        let w = |e: usize| ((i2s[e / 128 * 32 + e % 32] >> (6 - 2 * (e % 128 / 32))) & 3) as i8 - 1;
        let row = |r: usize| (0..cols).map(|c| w(r * cols + c)).collect::<Vec<i8>>();
        let half = head_dim / 2;
        let permuted = |r: usize| r / head_dim * head_dim + 2 * (r % half) + r % head_dim / half;
        for r in 0..rows {
            assert_eq!(row(permuted(r)), hf[r * cols..(r + 1) * cols], "{name} row {r}");
        }
        assert!((0..rows).any(|r| row(r) != hf[r * cols..(r + 1) * cols]), "{name}: rows are not permuted");
    }
}
