//! The trained demo model (fixtures/austen-tiny) against the PyTorch model it came from:
//! scripts/train_tiny.py wrote `reference.json` in eval mode, float32.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tern::model::DEFAULT_BATCH;
use tern::sampler::argmax;
use tern::tokenizer::TextTokenizer;
use tern::{KvType, Model, State};
use tern_format::Encoding;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/austen-tiny")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn load(embed: Encoding) -> (tempfile::TempDir, Model, TextTokenizer) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("austen.tern");
    let opts = tern_convert::Options { embed, progress: false, pause_per_tensor: None };
    tern_convert::convert(&dir(), &out, &opts).unwrap();
    let model = Model::open(&out).unwrap();
    let tok = TextTokenizer::from_json(model.file().tokenizer_json(), model.config().vocab_size).unwrap();
    (tmp, model, tok)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut st = State::new(model.config(), prompt.len() + n, 32).unwrap();
    let mut next = argmax(model.forward(&mut st, prompt, 0).unwrap());
    let mut out = vec![next];
    while out.len() < n {
        next = argmax(model.forward(&mut st, &[next], prompt.len() + out.len() - 1).unwrap());
        out.push(next);
    }
    out
}

#[test]
fn prompts_match_pytorch() {
    let r = reference();
    for embed in [Encoding::F32, Encoding::F16] {
        let (_tmp, model, tok) = load(embed);
        for p in r["prompts"].as_array().unwrap() {
            let prompt = ids(&p["ids"]);
            assert_eq!(tok.encode(p["prompt"].as_str().unwrap()).unwrap(), prompt);
            let want = ids(&p["greedy"]);
            assert_eq!(greedy(&model, &prompt, want.len()), want, "{embed:?}: {}", p["prompt"]);
            if embed == Encoding::F32 {
                let mut st = State::new(model.config(), prompt.len(), 32).unwrap();
                let logits = model.forward(&mut st, &prompt, 0).unwrap();
                let top_ids = ids(&p["top5_ids"]);
                let top: Vec<f64> = p["top5_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let max = top.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (&id, &want) in top_ids.iter().zip(&top) {
                    let err = (f64::from(logits[id as usize]) - want).abs() / max;
                    assert!(err < 1e-2, "{}: token {id} logit {} vs {want}", p["prompt"], logits[id as usize]);
                }
                let mut order: Vec<u32> = (0..logits.len() as u32).collect();
                order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
                assert_eq!(order[..5], top_ids[..], "{}", p["prompt"]);
            }
        }
    }
}

#[test]
fn heldout_perplexity_matches_pytorch() {
    let r = reference();
    let h = &r["heldout"];
    let (_tmp, model, tok) = load(Encoding::F32);
    let text = std::fs::read_to_string(dir().join(h["file"].as_str().unwrap())).unwrap();
    let ids = tok.encode_plain(&text).unwrap();
    let ctx = h["ctx"].as_u64().unwrap() as usize;
    let p = tern::perplexity::perplexity(&model, &ids, ctx, KvType::F32, DEFAULT_BATCH, &mut |_| {}).unwrap();
    let want = h["ppl"].as_f64().unwrap();
    assert_eq!(p.tokens as u64, h["tokens"].as_u64().unwrap(), "same tokens scored");
    let rel = (p.ppl - want).abs() / want;
    eprintln!("held-out ppl: tern {:.4}, PyTorch {want:.4} (relative difference {rel:.2e})", p.ppl);
    assert!(rel < 5e-3, "tern {} vs PyTorch {want}", p.ppl);
}

/// `--output-type q8`, `q6` and `q4` cost under 1% of held-out perplexity (q8's bar was set
/// before measuring; q6's and q4's are the goal; they measured +0.06% and +0.48%).
#[test]
fn compact_output_matrices_cost_little_perplexity() {
    let r = reference();
    let ctx = r["heldout"]["ctx"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string(dir().join("heldout.txt")).unwrap();
    let ppl = |embed| {
        let (_tmp, model, tok) = load(embed);
        let ids = tok.encode_plain(&text).unwrap();
        tern::perplexity::perplexity(&model, &ids, ctx, KvType::F32, DEFAULT_BATCH, &mut |_| {}).unwrap().ppl
    };
    let exact = ppl(Encoding::F32);
    let cost = |e| ppl(e) / exact - 1.0;
    let [f16, q8, q6, q4] = [Encoding::F16, Encoding::Q8, Encoding::Q6, Encoding::Q4].map(cost);
    eprintln!(
        "held-out ppl: f32 output {exact:.4}; cost of f16 {:+.3}%, q8 {:+.3}%, q6 {:+.3}%, q4 {:+.3}%",
        100.0 * f16,
        100.0 * q8,
        100.0 * q6,
        100.0 * q4
    );
    assert!(q8.abs() < 0.01 && f16.abs() < 0.01 && q6.abs() < 0.01, "f16 {f16}, q8 {q8}, q6 {q6}");
    assert!(q4.abs() < 0.01 && q4 != q6, "q4 {q4}");
}

/// An f16 KV cache costs under 0.5% of held-out perplexity (the bar was set before
/// measuring), and its logits follow the f32 cache's closely.
#[test]
fn f16_kv_cache_costs_little_perplexity() {
    let r = reference();
    let ctx = r["heldout"]["ctx"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string(dir().join("heldout.txt")).unwrap();
    let (_tmp, model, tok) = load(Encoding::F32);
    let ids = tok.encode_plain(&text).unwrap();
    let ppl = |kv| tern::perplexity::perplexity(&model, &ids, ctx, kv, DEFAULT_BATCH, &mut |_| {}).unwrap().ppl;
    let (exact, f16) = (ppl(KvType::F32), ppl(KvType::F16));
    eprintln!("held-out ppl: f32 KV cache {exact:.4}, f16 {f16:.4} ({:+.3}%)", 100.0 * (f16 / exact - 1.0));
    assert!((f16 / exact - 1.0).abs() < 0.005, "f16 KV {f16} vs f32 {exact}");
    assert!(f16 != exact, "the f16 cache must change something");
}
