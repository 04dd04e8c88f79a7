//! The runtime against the independent numpy reference (`scripts/reference.py`), in layers:
//! exact kernels, teacher-forced layers, end-to-end logits. See the Runtime issue on why an
//! end-to-end tolerance alone proves nothing under int8 activation rounding.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tern::kernels::Kernels;
use tern::matmul;
use tern::ops::quantize_activations;
use tern::sampler::argmax;
use tern::tokenizer::{Detokenizer, TextTokenizer};
use tern::{KvType, Model, State};
use tern_format::ternary::{padded_cols, row_bytes};
use tern_format::{Encoding, Shape};

const FIXTURES: [&str; 7] = [
    "tiny-tied",
    "tiny-untied",
    "tiny-odd-gqa-bf16",
    "tiny-f16-sharded",
    "austen-tiny",
    // Pre-packed, as published (scripts/make_hf_fixtures.py): microsoft/bitnet-b1.58-2B-4T's
    // layout (autobitlinear) and the Llama-architecture 1.58-bit checkpoints' (bitlinear).
    "bitnet-2b-tiny",
    "falcon3-tiny",
];

/// The fixtures with goldens from transformers itself (`hf_golden.json`): the pre-packed
/// ones above, and (issue 30, transformers' goldens only) bf16 master weights quantized
/// online, per-linear norms with biases after (BitLinear, online AutoBitLinear) and before
/// (offline AutoBitLinear) the scale, and a Falcon-E-shaped checkpoint.
const HF_FIXTURES: [&str; 7] = [
    "bitnet-2b-tiny",
    "falcon3-tiny",
    "bitnet-2b-bf16-tiny",
    "bitnet-rmsnorm-bias-tiny",
    "bitnet-2b-rmsnorm-bias-tiny",
    "bitnet-online-rmsnorm-bias-tiny",
    "falcon-e-tiny",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

struct Fixture {
    name: &'static str,
    _dir: tempfile::TempDir,
    model: Model,
    tok: TextTokenizer,
    golden: Value,
}

/// Converts a fixture (embedding kept in f32, the precision the reference uses) and loads it.
fn load(name: &'static str, embed: Encoding) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.tern");
    let opts = tern_convert::Options { embed, progress: false, pause_per_tensor: None };
    tern_convert::convert(&fixture(name), &out, &opts).unwrap();
    let model = Model::open(&out).unwrap();
    let tok = TextTokenizer::from_json(model.file().tokenizer_json(), model.config().vocab_size).unwrap();
    // The issue-30 fixtures have no numpy-reference golden (Value::Null).
    let golden = if fixture(name).join("golden.json").exists() { golden(name, "golden.json") } else { Value::Null };
    Fixture { name, _dir: dir, model, tok, golden }
}

/// Each fixture of `names` loaded (f32 embedding) once per kernel set this CPU has, with a
/// label naming both.
fn with_each_kernel_set(names: &'static [&'static str]) -> impl Iterator<Item = (Fixture, String)> {
    names.iter().flat_map(|&n| {
        Kernels::available().into_iter().map(move |k| {
            let mut f = load(n, Encoding::F32);
            f.model.set_kernels(k);
            (f, format!("{n} ({} kernels)", k.name()))
        })
    })
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let diff = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(1e-30, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn tokenizer_matches_hugging_face() {
    for name in FIXTURES {
        let f = load(name, Encoding::F32);
        let prompt = f.golden["prompt"].as_str().unwrap();
        assert_eq!(f.tok.encode(prompt).unwrap(), ids(&f.golden["tokens"]), "{name}");
    }
}

#[test]
fn detokenization_round_trips_streamed_text() {
    let f = load("tiny-tied", Encoding::F16);
    let text = "It is a truth — naïve “Mr. Darcy” said: 42 ünïcödé!\nNew line.";
    let ids = f.tok.encode(text).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    // Stream everything after BOS one token at a time, as generation does.
    let mut d = Detokenizer::new(&f.tok, &ids[..1]);
    let mut out = String::new();
    for &id in &ids[1..] {
        let piece = d.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "piece {piece:?} split a character");
        out.push_str(&piece);
    }
    out.push_str(&d.flush().unwrap());
    assert_eq!(out, text);
    // Streaming after a prompt keeps the space between prompt and continuation.
    let (a, b) = (f.tok.encode("It is").unwrap(), f.tok.encode("It is a truth").unwrap());
    assert_eq!(b[..a.len()], a[..], "prefix tokenizes the same");
    let mut d = Detokenizer::new(&f.tok, &a);
    let cont: String = b[a.len()..].iter().map(|&t| d.push(t).unwrap()).collect();
    assert_eq!(cont + &d.flush().unwrap(), " a truth");
}

/// Exact: the same int8 input gives the same int8 quantization and the same integer dot
/// products as the reference, and outputs equal up to float rounding.
#[test]
fn bitlinear_is_exact() {
    for name in FIXTURES {
        let f = load(name, Encoding::F32);
        let p = &f.golden["bitlinear"];
        let x = floats(&p["x"]);
        let want_xq: Vec<i8> = p["xq"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i8).collect();
        let want_dot: Vec<i32> = p["dot"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let want_y: Vec<f64> = p["y"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

        let mut xq = vec![0i8; padded_cols(x.len())];
        let (s_x, sum) = quantize_activations(&x, &mut xq);
        assert_eq!(&xq[..x.len()], &want_xq[..], "{name}: int8 activations");
        assert_eq!(sum, want_xq.iter().map(|&v| i32::from(v)).sum::<i32>());

        let info = f.model.file().tensors().iter().find(|t| t.name == p["tensor"].as_str().unwrap()).unwrap();
        let Shape::Matrix { rows, cols } = info.shape else { panic!() };
        assert_eq!(cols as usize, x.len());
        let mut dot = vec![0i32; rows as usize];
        matmul::ternary_gemm(
            &Kernels::portable(),
            f.model.file().data(info),
            row_bytes(x.len()),
            &xq,
            &[sum],
            &mut dot,
        );
        assert_eq!(dot, want_dot, "{name}: integer dot products");

        let beta = f.model.config().scale_convention.multiplier(info.scale);
        let y: Vec<f32> = dot.iter().map(|&d| d as f32 * (beta / s_x)).collect();
        let err = rel_err(&y, &want_y);
        assert!(err < 1e-6, "{name}: BitLinear output relative error {err:e}");
    }
}

/// Teacher-forced: each layer, fed the exact input the reference layer saw, gives the
/// reference's output within 1e-4 relative at every position. One int8 flip inside a
/// layer (an activation within float rounding of a .5 boundary) is rare and bounded:
/// at most one position per fixture may exceed 1e-4, and never 1e-2.
#[test]
fn layers_match_reference_teacher_forced() {
    for (f, name) in with_each_kernel_set(&FIXTURES) {
        let c = f.model.config();
        let h = c.hidden_size as usize;
        let mut over = Vec::new();
        let mut worst = 0.0f64;
        for (l, pair) in f.golden["layers"].as_array().unwrap().iter().enumerate() {
            let input: Vec<f32> = matrix(&pair["input"]).concat().iter().map(|&v| v as f32).collect();
            let want = matrix(&pair["output"]);
            let mut st = State::new(c, want.len(), 8).unwrap();
            let got = f.model.forward_layer(&mut st, l, &input, 0).unwrap();
            for (p, w) in want.iter().enumerate() {
                let err = rel_err(&got[p * h..(p + 1) * h], w);
                worst = worst.max(err);
                if err > 1e-4 {
                    over.push((l, p, err));
                }
            }
        }
        eprintln!("{name}: worst teacher-forced layer error {worst:.2e}, over 1e-4 at {over:?}");
        assert!(over.len() <= 1, "{name}: more than one position over 1e-4: {over:?}");
        assert!(worst < 1e-2, "{name}: a layer output is off by {worst:e}");
    }
}

/// End to end: argmax agrees at ≥ 95% of positions, and the logits are closer to the
/// quantized reference than to the same model without activation quantization.
#[test]
fn logits_match_reference_end_to_end() {
    end_to_end(KvType::F32, 0.95);
}

/// An f16 KV cache (the reference keeps f32) is lossy: its rounding moves these random
/// models' logits about as much as activation quantization does (median 1.4e-2 relative),
/// and argmax agrees at 92–97% of positions. The 95% bar above fails on tiny-tied (0.921,
/// as the f16 embedding does there), which is why the f16 cache is an option, judged on the
/// trained model's perplexity (tests/demo_model.rs). What holds here: the logits stay
/// closer to BitLinear's than to the unquantized model's, and argmax agrees at ≥ 90%
/// (the f16 embedding's bar).
#[test]
fn f16_kv_cache_stays_close_to_the_reference() {
    end_to_end(KvType::F16, 0.9);
}

/// The end-to-end checks with a KV cache of `kv`: argmax agreement of at least `min_agree`.
fn end_to_end(kv: KvType, min_agree: f64) {
    for (f, name) in with_each_kernel_set(&FIXTURES) {
        let name = format!("{name}, {} KV cache", kv.name());
        let tokens = ids(&f.golden["tokens"]);
        let want = matrix(&f.golden["logits"]);
        let noq = matrix(&f.golden["logits_no_act_quant"]);
        assert!(tokens.len() >= 16 && want.len() == tokens.len());
        let mut st = State::with_kv(f.model.config(), tokens.len(), 8, kv).unwrap();
        let mut got = Vec::new();
        f.model.forward_all(&mut st, &tokens, 0, &mut |_, l| got.push(l.to_vec())).unwrap();
        let agree = got.iter().zip(&want).filter(|(g, w)| {
            let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            argmax(g) == argmax(&wf)
        });
        let agree = agree.count() as f64 / tokens.len() as f64;
        let e_q = median(got.iter().zip(&want).map(|(g, w)| rel_err(g, w)).collect());
        let e_noq = median(got.iter().zip(&noq).map(|(g, w)| rel_err(g, w)).collect());
        eprintln!(
            "{name}: argmax agreement {agree:.3}, median error vs reference {e_q:.2e}, vs no-act-quant {e_noq:.2e}"
        );
        assert!(agree >= min_agree, "{name}: argmax agreement {agree}");
        assert!(e_q < e_noq, "{name}: closer to the unquantized model ({e_noq:e}) than to BitLinear ({e_q:e})");
    }
}

/// The golden file `file` of a fixture.
fn golden(name: &str, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join(file)).unwrap()).unwrap()
}

/// Against Hugging Face transformers itself (`AutoModelForCausalLM.from_pretrained` on the
/// packed checkpoint, CPU), with every kernel set: the same tokens; logits closer to the
/// quantized transformers model than to the same model without activation quantization;
/// argmax agreement at every position with transformers in float64. Transformers' own
/// float32 run can round an activation that lies within float32 error of an int8 rounding
/// boundary the other way, and the flipped value then reaches every later position through
/// the KV cache (bitnet-2b-tiny at position 11: its float32 and float64 runs differ by 3e-2
/// from there on, while float64 and the numpy reference agree to 8e-7). Against the
/// float32 run, argmax must agree at ≥ 95% of positions, the end-to-end bar above.
#[test]
fn logits_agree_with_transformers() {
    for (f, name) in with_each_kernel_set(&HF_FIXTURES) {
        let hf = golden(f.name, "hf_golden.json");
        let tokens = ids(&hf["tokens"]);
        assert_eq!(f.tok.encode(hf["prompt"].as_str().unwrap()).unwrap(), tokens, "{name}: tokenizer");
        let mut st = State::new(f.model.config(), tokens.len(), 8).unwrap();
        let mut got = Vec::new();
        f.model.forward_all(&mut st, &tokens, 0, &mut |_, l| got.push(l.to_vec())).unwrap();
        let noq = matrix(&hf["logits_no_act_quant"]);
        let e_noq = median(got.iter().zip(&noq).map(|(g, w)| rel_err(g, w)).collect());
        for (field, min_agree) in [("logits_float64", 1.0), ("logits", 0.95)] {
            let want = matrix(&hf[field]);
            assert!(tokens.len() >= 16 && want.len() == tokens.len() && noq.len() == tokens.len());
            let agree = got.iter().zip(&want).filter(|(g, w)| {
                let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                argmax(g) == argmax(&wf)
            });
            let agree = agree.count() as f64 / tokens.len() as f64;
            let e_q = median(got.iter().zip(&want).map(|(g, w)| rel_err(g, w)).collect());
            eprintln!(
                "{name} vs transformers {field}: argmax agreement {agree:.3} of {} positions, median logit error \
                 vs quantized {e_q:.2e}, vs no-act-quant {e_noq:.2e}",
                tokens.len()
            );
            assert!(agree >= min_agree, "{name}: argmax agreement with transformers' {field} {agree}");
            assert!(e_q < e_noq, "{name}: closer to the unquantized model ({e_noq:e}) than to {field} ({e_q:e})");
        }
    }
}

/// Greedy decoding one token at a time gives transformers' greedy continuation (float64:
/// see above; the float32 run's is reported).
#[test]
fn greedy_continuation_matches_transformers() {
    for name in HF_FIXTURES {
        let f = load(name, Encoding::F32);
        let hf = golden(name, "hf_golden.json");
        let want = ids(&hf["greedy_float64"]);
        let got = greedy(&f.model, ids(&hf["tokens"]), want.len());
        let f32_run = ids(&hf["greedy"]);
        let same = got.iter().zip(&f32_run).take_while(|(a, b)| a == b).count();
        eprintln!("{name}: greedy equals transformers float64's; float32's for the first {same} of {}", f32_run.len());
        assert_eq!(got, want, "{name}");
    }
}

/// `n` tokens of greedy decoding after `tokens`, one token at a time.
fn greedy(model: &Model, mut tokens: Vec<u32>, n: usize) -> Vec<u32> {
    let mut st = State::new(model.config(), tokens.len() + n, 8).unwrap();
    let mut next = argmax(model.forward(&mut st, &tokens, 0).unwrap());
    let mut got = vec![next];
    while got.len() < n {
        tokens.push(next);
        next = argmax(model.forward(&mut st, &[next], tokens.len() - 1).unwrap());
        got.push(next);
    }
    got
}

/// Greedy decoding one token at a time reproduces the reference's continuation.
#[test]
fn greedy_continuation_matches_reference() {
    for name in FIXTURES {
        let f = load(name, Encoding::F32);
        let want = ids(&f.golden["greedy"]);
        assert_eq!(greedy(&f.model, ids(&f.golden["tokens"]), want.len()), want, "{}", f.name);
    }
}

/// Prompt processing in chunks and token-by-token decoding run the same arithmetic in the
/// same order: their logits are bitwise equal (with either KV cache).
#[test]
fn batched_prompt_equals_one_token_at_a_time() {
    // Every fixture, the issue-30 ones (biases take the several-row path for one token too) included.
    let names = FIXTURES.iter().chain(&HF_FIXTURES[2..]);
    for (name, kv) in names.flat_map(|n| [(*n, KvType::F32), (*n, KvType::F16)]) {
        let f = load(name, Encoding::F16);
        let tokens = match f.golden.is_null() {
            true => ids(&golden(name, "hf_golden.json")["tokens"]),
            false => ids(&f.golden["tokens"]),
        };
        let c = f.model.config();
        let mut batched = Vec::new();
        let mut st = State::with_kv(c, tokens.len(), 16, kv).unwrap();
        f.model.forward_all(&mut st, &tokens, 0, &mut |_, l| batched.push(l.to_vec())).unwrap();
        let mut st = State::with_kv(c, tokens.len(), 1, kv).unwrap();
        for (p, &t) in tokens.iter().enumerate() {
            let one = f.model.forward(&mut st, &[t], p).unwrap();
            assert!(one == batched[p].as_slice(), "{name} ({kv:?} KV cache): position {p} differs");
        }
    }
}

/// The same over a context of several attention spans (tiny-tied with its context raised
/// to 700 positions; RoPE models have no position table): decoding splits attention by
/// spans of positions, prompts by tokens, and both still give the same bits.
#[test]
fn batched_prompt_equals_one_token_at_a_time_across_spans() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(fixture("tiny-tied").join(f), dir.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(fixture("tiny-tied").join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config).unwrap();
    config["max_position_embeddings"] = 700.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let out = dir.path().join("model.tern");
    let opts = tern_convert::Options { embed: Encoding::F16, progress: false, pause_per_tensor: None };
    tern_convert::convert(dir.path(), &out, &opts).unwrap();
    let model = Model::open(&out).unwrap();
    let c = model.config();
    let tokens: Vec<u32> = (0..600u32).map(|i| 3 + i * 7919 % (c.vocab_size - 3)).collect();
    for kv in [KvType::F32, KvType::F16] {
        let mut batched = Vec::new();
        // Chunks of 24 tokens, so that some straddle the spans' boundaries.
        let mut st = State::with_kv(c, tokens.len(), 24, kv).unwrap();
        model.forward_all(&mut st, &tokens, 0, &mut |_, l| batched.push(l.to_vec())).unwrap();
        let mut st = State::with_kv(c, tokens.len(), 1, kv).unwrap();
        for (p, &t) in tokens.iter().enumerate() {
            let one = model.forward(&mut st, &[t], p).unwrap();
            assert!(one == batched[p].as_slice(), "{kv:?} KV cache: position {p} differs");
        }
    }
}

/// The default f16 embedding changes logits only slightly. (The lossy q8 output matrix is
/// judged by perplexity on the trained model: tests/demo_model.rs.)
#[test]
fn f16_embedding_keeps_argmax() {
    for name in FIXTURES {
        let embed = Encoding::F16;
        let f = load(name, embed);
        let tokens = ids(&f.golden["tokens"]);
        let want = matrix(&f.golden["logits"]);
        let mut st = State::new(f.model.config(), tokens.len(), 8).unwrap();
        let mut agree = 0;
        f.model
            .forward_all(&mut st, &tokens, 0, &mut |p, l| {
                let wf: Vec<f32> = want[p].iter().map(|&v| v as f32).collect();
                agree += usize::from(argmax(l) == argmax(&wf));
            })
            .unwrap();
        let frac = agree as f64 / tokens.len() as f64;
        eprintln!("{name}: {embed:?} embedding argmax agreement {frac:.3}");
        assert!(frac >= 0.9, "{name} {embed:?}: {frac}");
    }
}

#[test]
fn context_overflow_is_an_error() {
    let f = load("tiny-tied", Encoding::F16);
    let c = f.model.config();
    assert!(State::new(c, c.max_positions as usize + 1, 8).is_err());
    let mut st = State::new(c, 4, 8).unwrap();
    let err = f.model.forward(&mut st, &[1, 2, 3, 4, 5], 0).unwrap_err().to_string();
    assert!(err.contains("exceed the context"), "{err}");
    let err = f.model.forward(&mut st, &[1, 9999], 0).unwrap_err().to_string();
    assert!(err.contains("token id 9999"), "{err}");
}

/// The trace hook hands out each layer's input and output: inputs follow the reference's
/// hidden states, and each layer's output is the next layer's input.
#[test]
fn trace_hook_exposes_layer_states() {
    let f = load("tiny-untied", Encoding::F32);
    let tokens = ids(&f.golden["tokens"]);
    let c = f.model.config();
    let (h, n_layers) = (c.hidden_size as usize, c.n_layers as usize);
    let mut inputs = vec![vec![Vec::new(); tokens.len()]; n_layers];
    let mut outputs = inputs.clone();
    let mut st = State::new(c, tokens.len(), 8).unwrap();
    f.model
        .forward_traced(&mut st, &tokens, 0, &mut |_, _| {}, &mut |l, p, stage, x| {
            assert_eq!(x.len(), h);
            let slot = if stage == tern::Stage::LayerInput { &mut inputs } else { &mut outputs };
            slot[l][p] = x.to_vec();
        })
        .unwrap();
    for l in 0..n_layers {
        let want = matrix(&f.golden["layers"][l]["input"]);
        for p in 0..tokens.len() {
            let err = rel_err(&inputs[l][p], &want[p]);
            assert!(err < 1e-5, "layer {l} position {p}: {err:e}");
            if l + 1 < n_layers {
                assert_eq!(outputs[l][p], inputs[l + 1][p]);
            }
        }
    }
}
