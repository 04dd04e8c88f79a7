//! Invariance, bit for bit (`f32::to_bits`): the logits of every position of a prompt are
//! the same whatever the thread count (1, 2, 3), whatever the prompt chunk size (`State`'s
//! batch, `tern logits --batch-size`), and whether the positions ran as one prompt pass, in
//! chunks, or as one-token decode steps. Small random models of random shapes (head
//! widths that take every attention kernel path, grouped-query attention, prompts past a
//! span of 256 positions), in the library and through the CLI.

#[path = "../../converter/tests/support/packed_checkpoint.rs"]
mod packed_checkpoint;

use packed_checkpoint::{write_folder, Tensor};
use proptest::prelude::*;
use safetensors::Dtype;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use tern::{KvType, Model, State};

/// The context of every random model: long enough for prompts past a span.
const CONTEXT: usize = 320;

/// A random model's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    head_dim: usize,
    heads: usize,
    kv_heads: usize,
    layers: usize,
    inter: usize,
}

impl Shape {
    fn hidden(&self) -> usize {
        self.head_dim * self.heads
    }
}

/// A deterministic stream of floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A 1bitLLM-style checkpoint (F32, tied output) of `shape` with random weights, in `dir`.
fn random_checkpoint(dir: &Path, s: Shape, seed: u64) {
    let (h, i, kv) = (s.hidden(), s.inter, s.kv_heads * s.head_dim);
    let vocab = 512;
    let mut rng = Rng(seed);
    let mut tensor = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).flat_map(|_| (offset + scale * rng.next()).to_le_bytes()).collect();
        Tensor { name, dtype: Dtype::F32, shape, data }
    };
    let w = |rows: usize, cols: usize| (vec![rows, cols], (cols as f32).powf(-0.5) * 1.7);
    let mut tensors = vec![tensor("model.embed_tokens.weight".into(), vec![vocab, h], 0.2, 0.0)];
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (name, (shape, scale)) in [
            ("self_attn.q_proj", w(h, h)),
            ("self_attn.k_proj", w(kv, h)),
            ("self_attn.v_proj", w(kv, h)),
            ("self_attn.o_proj", w(h, h)),
            ("mlp.gate_proj", w(i, h)),
            ("mlp.up_proj", w(i, h)),
            ("mlp.down_proj", w(h, i)),
        ] {
            tensors.push(tensor(format!("{p}.{name}.weight"), shape, scale, 0.0));
        }
        for (name, n) in [
            ("input_layernorm", h),
            ("self_attn.inner_attn_ln", h),
            ("post_attention_layernorm", h),
            ("mlp.ffn_layernorm", i),
        ] {
            tensors.push(tensor(format!("{p}.{name}.weight"), vec![n], 0.1, 1.0));
        }
    }
    tensors.push(tensor("model.norm.weight".into(), vec![h], 0.1, 1.0));
    let config = json!({
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    });
    let tokenizer_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-tied");
    write_folder(dir, &tokenizer_from, &config, &tensors);
}

/// A random model of `shape`, converted: its temp dir and `.tern` path.
fn random_model(s: Shape, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("checkpoint");
    random_checkpoint(&src, s, seed);
    let out = dir.path().join("model.tern");
    let opts = tern_convert::Options { progress: false, ..Default::default() };
    tern_convert::convert(&src, &out, &opts).unwrap();
    (dir, out)
}

/// Random prompt tokens below 512.
fn prompt(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed ^ 0x5EED);
    (0..n).map(|_| ((rng.next() + 1.0) * 256.0) as u32 % 512).collect()
}

/// The bits of every position's logits.
type Bits = Vec<Vec<u32>>;

fn bits(l: &[f32]) -> Vec<u32> {
    l.iter().map(|x| x.to_bits()).collect()
}

/// Every position's logits of `tokens` run as prompt chunks of `batch`, on `threads` threads.
fn prompt_logits(model: &Model, tokens: &[u32], threads: usize, batch: usize, kv: KvType) -> Bits {
    tern::pool::with_threads(threads, || {
        let mut st = State::with_kv(model.config(), CONTEXT, batch, kv).unwrap();
        let mut out = Vec::new();
        model.forward_all(&mut st, tokens, 0, &mut |_, l| out.push(bits(l))).unwrap();
        out
    })
    .unwrap()
}

/// Every position's logits of `tokens` as one-token decode steps after a prompt of the
/// first `prefix` (run in one pass), on `threads` threads.
fn decode_logits(model: &Model, tokens: &[u32], prefix: usize, threads: usize, kv: KvType) -> Bits {
    tern::pool::with_threads(threads, || {
        let mut st = State::with_kv(model.config(), CONTEXT, CONTEXT, kv).unwrap();
        let mut out = Vec::new();
        if prefix > 0 {
            model.forward_all(&mut st, &tokens[..prefix], 0, &mut |_, l| out.push(bits(l))).unwrap();
        }
        for (pos, &tok) in tokens.iter().enumerate().skip(prefix) {
            out.push(bits(model.forward(&mut st, &[tok], pos).unwrap()));
        }
        out
    })
    .unwrap()
}

/// The first position whose logits differ, for a readable failure.
fn first_difference(a: &Bits, b: &Bits) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&p| a.get(p) != b.get(p))
}

fn shapes() -> impl Strategy<Value = Shape> {
    // Head widths 16 (attention's narrow path), 32 and 64 (its blocked path); kv heads a
    // divisor of the heads (grouped-query attention).
    (prop_oneof![Just(16usize), Just(32), Just(64)], 1usize..=4, 1usize..=2, 1usize..=3).prop_flat_map(
        |(head_dim, heads, layers, inter_mult)| {
            let divisors: Vec<usize> = (1..=heads).filter(|d| heads % d == 0).collect();
            proptest::sample::select(divisors).prop_map(move |kv_heads| Shape {
                head_dim,
                heads,
                kv_heads,
                layers,
                inter: head_dim * heads * inter_mult + 16,
            })
        },
    )
}

proptest! {
    // Each case converts a model and runs its prompt six ways (a second or so in all).
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn logits_do_not_depend_on_threads_chunks_or_decoding(
        shape in shapes(),
        len in 1usize..=300,
        chunk in 0usize..300,
        prefix_share in 0.0f64..1.0,
        f16_kv in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (_dir, path) = random_model(shape, seed);
        let model = Model::open(&path).unwrap();
        let tokens = prompt(len, seed);
        let kv = if f16_kv { KvType::F16 } else { KvType::F32 };
        let chunk = 1 + chunk % len;
        let prefix = (len as f64 * prefix_share) as usize;

        let want = prompt_logits(&model, &tokens, 1, 512, kv);
        prop_assert_eq!(want.len(), len);
        let runs = [
            ("2 threads, chunks of 7", prompt_logits(&model, &tokens, 2, 7, kv)),
            ("3 threads, random chunks", prompt_logits(&model, &tokens, 3, chunk, kv)),
            ("2 threads, chunks of 1", prompt_logits(&model, &tokens, 2, 1, kv)),
            ("1 thread, decode steps", decode_logits(&model, &tokens, 0, 1, kv)),
            ("2 threads, prompt then decode steps", decode_logits(&model, &tokens, prefix, 2, kv)),
        ];
        for (what, got) in runs {
            prop_assert!(
                got == want,
                "{:?} {:?} len {} chunk {} prefix {}: {} differs from 1 thread, chunks of 512, first at position {:?}",
                shape, kv, len, chunk, prefix, what, first_difference(&got, &want)
            );
        }
    }
}

/// `tern logits --all` as a user runs it: `--threads 2 --batch-size 7` and `--batch-size 1`
/// print the very logits of `--threads 1 --batch-size 512` (JSON floats print the shortest
/// decimal that reads back as the same f32).
#[test]
fn cli_logits_do_not_depend_on_threads_or_batch_size() {
    let shape = Shape { head_dim: 32, heads: 4, kv_heads: 2, layers: 2, inter: 144 };
    let (_dir, path) = random_model(shape, 7);
    let ids: Vec<String> = prompt(270, 7).iter().map(|t| t.to_string()).collect();
    let ids = ids.join(",");
    let run = |threads: &str, batch: &str| -> Bits {
        let o = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["logits", path.to_str().unwrap(), "--all", "--tokens", &ids, "--threads", threads])
            .args(["--batch-size", batch])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rows = v["logits"].as_array().unwrap();
        rows.iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| (x.as_f64().unwrap() as f32).to_bits()).collect())
            .collect()
    };
    let want = run("1", "512");
    assert_eq!(want.len(), 270);
    for (threads, batch) in [("2", "7"), ("1", "1"), ("3", "100")] {
        let got = run(threads, batch);
        assert!(
            got == want,
            "--threads {threads} --batch-size {batch}: first difference at {:?}",
            first_difference(&got, &want)
        );
    }
    // The short flag and a bad value.
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["logits", path.to_str().unwrap(), "--tokens", "1,2,3", "-b", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--batch-size") && !err.contains("panicked"), "{err}");
}
