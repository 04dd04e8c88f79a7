//! The runtime on the pre-packed Hugging Face layouts (bitnet-b1.58-2B-4T's `autobitlinear`,
//! the Llama-architecture checkpoints' `bitlinear`), from checkpoints built in Rust with the
//! ternary matrices of a master-weight fixture (`converter/tests/support`): the same
//! weights must give the same logits whichever layout carried them. Also: generation stops
//! at every EOS id, `tern inspect` shows the new fields, version-1 files still run.

#[path = "../../converter/tests/support/packed_checkpoint.rs"]
mod packed_checkpoint;

use packed_checkpoint::{packed_config, packed_tensors, without_sub_norms, write_folder, Family};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tern::generate::{generate, GenerateOptions};
use tern::sampler::{argmax, SamplerConfig};
use tern::tokenizer::TextTokenizer;
use tern::{KvType, Model, State};
use tern_format::{Encoding, TernFile};

const SRC: &str = "tiny-odd-gqa-bf16";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

/// Converts the checkpoint folder `dir` into `out/name.tern` (f32 embedding) and opens it.
fn convert(dir: &Path, out: &Path, name: &str) -> (PathBuf, Model) {
    let path = out.join(format!("{name}.tern"));
    let opts = tern_convert::Options { embed: Encoding::F32, progress: false, pause_per_tensor: None };
    tern_convert::convert(dir, &path, &opts).unwrap();
    let model = Model::open(&path).unwrap();
    (path, model)
}

/// The prompt tokens of the fixture's golden file.
fn golden_tokens() -> Vec<u32> {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(fixture(SRC).join("golden.json")).unwrap()).unwrap();
    g["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// Logits at every position of `tokens`.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut st = State::with_kv(model.config(), tokens.len(), 8, KvType::F32).unwrap();
    let mut out = Vec::new();
    model.forward_all(&mut st, tokens, 0, &mut |_, l| out.push(l.to_vec())).unwrap();
    out
}

/// `max |a - b| / max |b|` over all positions.
fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let diff = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max);
    diff / b.iter().flatten().map(|y| f64::from(y.abs())).fold(1e-30, f64::max)
}

/// A packed folder of `family` from the master fixture and its conversion `master`.
fn packed_folder(dst: &Path, master: &Path, family: Family) {
    let bytes = std::fs::read(master).unwrap();
    let tern = TernFile::parse(&bytes).unwrap();
    let tensors = packed_tensors(&fixture(SRC), &tern, family, Dtype::F32);
    write_folder(dst, &fixture(SRC), &packed_config(&fixture(SRC), family), &tensors);
}

/// 2B-4T's layout (`output * weight_scale`, the scale copied as given) holds β itself: the
/// logits equal the master file's bit for bit. The Llama layout holds 1/β and divides by it:
/// β comes back as the f32 reciprocal of an f32 reciprocal, which may differ from β by an
/// ulp, so the logits must agree to float rounding (here they agree exactly) and argmax
/// everywhere.
#[test]
fn packed_layouts_give_the_master_files_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = golden_tokens();
    let (master_path, master) = convert(&fixture(SRC), tmp.path(), "master");

    let two_b = tmp.path().join("2b");
    packed_folder(&two_b, &master_path, Family::BitNet2B);
    let (_, packed) = convert(&two_b, tmp.path(), "2b");
    assert_eq!(all_logits(&packed, &tokens), all_logits(&master, &tokens), "BitNetForCausalLM / autobitlinear");

    // The Llama family has no sub-norms: compare with the master weights without them.
    let plain = tmp.path().join("plain");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(SRC).join("config.json")).unwrap()).unwrap();
    write_folder(&plain, &fixture(SRC), &config, &without_sub_norms(&fixture(SRC)));
    let (_, plain) = convert(&plain, tmp.path(), "plain");
    let llama = tmp.path().join("llama");
    packed_folder(&llama, &master_path, Family::LlamaBitLinear);
    let (_, packed) = convert(&llama, tmp.path(), "llama");
    assert!(!packed.config().attn_sub_norm && !packed.config().ffn_sub_norm);
    let (got, want) = (all_logits(&packed, &tokens), all_logits(&plain, &tokens));
    let err = rel_err(&got, &want);
    eprintln!("LlamaForCausalLM / bitlinear against the master weights: max relative logit difference {err:.2e}");
    assert!(err < 1e-5, "{err:e}");
    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(argmax(g), argmax(w), "position {p}");
    }
}

fn greedy() -> GenerateOptions {
    let sampler = SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, repeat_last_n: 64 };
    GenerateOptions { max_new: 8, sampler, seed: 1, stop: vec![], kv_type: KvType::F32 }
}

/// Runs greedy generation on `prompt`; returns (tokens sampled, text emitted).
fn run(model: &Model, prompt: &[u32]) -> (usize, String) {
    let tok = TextTokenizer::from_json(model.file().tokenizer_json(), model.config().vocab_size).unwrap();
    let mut text = String::new();
    let stats = generate(model, &tok, prompt, &greedy(), &mut |piece| {
        text.push_str(piece);
        Ok(())
    })
    .unwrap();
    (stats.gen_tokens, text)
}

/// Generation stops at any id of the EOS list, not only at the first.
#[test]
fn generation_stops_at_every_eos_id() {
    let tmp = tempfile::tempdir().unwrap();
    let prompt = &golden_tokens()[..6];
    let (_, model) = convert(&fixture(SRC), tmp.path(), "plain");
    let (n, full) = run(&model, prompt);
    assert_eq!(n, 8, "{full:?}");
    // The greedy continuation's third token, made an extra EOS id of a copy.
    let mut st = State::new(model.config(), 16, 8).unwrap();
    let mut seq = prompt.to_vec();
    seq.push(argmax(model.forward(&mut st, prompt, 0).unwrap()));
    for _ in 0..2 {
        let at = seq.len() - 1;
        let next = argmax(model.forward(&mut st, &seq[at..], at).unwrap());
        seq.push(next);
    }
    let third = seq[prompt.len() + 2];
    assert_ne!(third, 2, "pick a prompt whose third greedy token is not the first EOS");

    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture(SRC).join(f), copy.join(f)).unwrap();
    }
    std::fs::write(copy.join("generation_config.json"), json!({"eos_token_id": [2, third]}).to_string()).unwrap();
    let (_, stopping) = convert(&copy, tmp.path(), "eos");
    assert_eq!(stopping.config().eos_ids().collect::<Vec<_>>(), [2, third]);
    let (n, text) = run(&stopping, prompt);
    assert_eq!(n, 3, "sampled two tokens, then the EOS");
    let tok = TextTokenizer::from_json(model.file().tokenizer_json(), 512).unwrap();
    let two = tok.decode(&seq[prompt.len() - 1..prompt.len() + 2]).unwrap();
    let one = tok.decode(&seq[prompt.len() - 1..prompt.len()]).unwrap();
    assert_eq!(text, two[one.len()..], "the text of the two tokens before the EOS");
    assert!(full.starts_with(&text) && full.len() > text.len());
}

/// `tern inspect` shows the converter's path, the scale convention, the EOS list and the
/// chat metadata.
#[test]
fn inspect_shows_the_packed_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (master_path, _) = convert(&fixture(SRC), tmp.path(), "master");
    let llama = tmp.path().join("llama");
    packed_folder(&llama, &master_path, Family::LlamaBitLinear);
    std::fs::write(llama.join("generation_config.json"), r#"{"eos_token_id": [2, 7]}"#).unwrap();
    let tc = json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}"});
    std::fs::write(llama.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let (path, _) = convert(&llama, tmp.path(), "llama");
    let o = Command::new(env!("CARGO_BIN_EXE_tern")).args(["inspect", path.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8(o.stdout).unwrap();
    for want in [
        "format version 3)",
        "weights       pre-packed ternary weights and weight_scale, copied as given",
        "scale         divide (y = dot / (scale · s_x))",
        "tokens        bos 1, eos 2 7, pad -",
        "special text  bos \"<s>\", eos \"</s>\"",
        "chat template 43 bytes",
        "sub-norms     attn false, ffn false",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tern")).args(["inspect", master_path.to_str().unwrap()]).output().unwrap();
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.contains("weights       master weights, ternarized by tern-convert (absmean)"), "{s}");
    assert!(s.contains("scale         multiply (y = dot · scale / s_x)") && s.contains("chat template none"), "{s}");
}

/// A file written at format version 1 (before pre-packed models) runs, with the same
/// logits as a fresh conversion of the same checkpoint.
#[test]
fn version_1_files_still_run() {
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../format-spec/tests/data/v1-tiny-odd-gqa-bf16.tern");
    let old = Model::open(&v1).unwrap();
    assert_eq!(tern_format::read_version(old.file().bytes()).unwrap(), 1);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v2.tern");
    let opts = tern_convert::Options { embed: Encoding::F16, progress: false, pause_per_tensor: None };
    tern_convert::convert(&fixture(SRC), &path, &opts).unwrap();
    let new = Model::open(&path).unwrap();
    let tokens = golden_tokens();
    assert_eq!(all_logits(&old, &tokens), all_logits(&new, &tokens));
    let o = Command::new(env!("CARGO_BIN_EXE_tern")).args(["inspect", v1.to_str().unwrap()]).output().unwrap();
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.contains("bytes, format version 1)") && s.contains("scale         multiply"), "{s}");
}
