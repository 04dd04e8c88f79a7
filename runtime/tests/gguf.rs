//! bitnet.cpp I2_S GGUF files (fixtures/gguf, written by scripts/make_gguf.py from the
//! pre-packed fixtures): the `.tern` converted from each runs bit for bit as the one converted
//! from the same weights in safetensors, and its rebuilt tokenizer encodes as the model's own.

use std::path::{Path, PathBuf};
use tern::tokenizer::TextTokenizer;
use tern::{Model, State};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(p)
}

fn convert(input: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    tern_convert::convert(input, &out, &tern_convert::Options { progress: false, ..Default::default() }).unwrap();
    out
}

/// (GGUF fixture, the safetensors checkpoint it was written from).
const PAIRS: [(&str, &str); 2] =
    [("gguf/bitnet-2b-tiny.i2_s.gguf", "bitnet-2b-tiny"), ("gguf/falcon-e-tiny.i2_s.gguf", "falcon3-tiny")];

/// The logits of every position, as f32 bit patterns.
fn logit_bits(model: &Model, tokens: &[u32]) -> Vec<Vec<u32>> {
    let mut st = State::new(model.config(), tokens.len(), 8).unwrap();
    let mut out = Vec::new();
    model.forward_all(&mut st, tokens, 0, &mut |_, l| out.push(l.iter().map(|v| v.to_bits()).collect())).unwrap();
    out
}

#[test]
fn gguf_logits_are_bit_identical_to_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    for (gguf, folder) in PAIRS {
        let a = Model::open(&convert(&fixture(gguf), tmp.path(), "a.tern")).unwrap();
        let b = Model::open(&convert(&fixture(folder), tmp.path(), "b.tern")).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 511).collect();
        let (la, lb) = (logit_bits(&a, &tokens), logit_bits(&b, &tokens));
        assert_eq!(la.len(), tokens.len());
        assert!(la[0].iter().any(|&v| v != la[0][0]), "{gguf}: logits are not all the same");
        for (pos, (x, y)) in la.iter().zip(&lb).enumerate() {
            assert!(x == y, "{gguf}: logits differ from {folder}'s at position {pos}");
        }
    }
}

/// Text that stresses the split regex: numbers, contractions, whitespace runs, unicode,
/// special-token text.
const TRICKY: &[&str] = &[
    "",
    " ",
    "   leading and trailing   ",
    "12345678901 1,000,000.25 3.14159 2024-12-07",
    "I'm sure you'll say it's theirs; we'd've THEY'RE 'quoted'",
    "tabs\tand\nnewlines\r\n\n\n  indented\n\t\tmore",
    "naïve café — “quotes” ‘single’ … ﬁ Ωmega 日本語のテキスト 한국어 emoji 🙂👍🏽",
    "<|begin_of_text|>Hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|end_of_text|>",
    "<|eot_id |> <|unknown|> <|begin_of_text",
    "x=(a+b)*c; y[i]->z // comment /* block */ #tag @user $5 100%",
    "!!!??? ... ---- ____ ====",
];

#[test]
fn rebuilt_tokenizer_encodes_as_the_models_own() {
    let tmp = tempfile::tempdir().unwrap();
    let heldout = std::fs::read_to_string(fixture("austen-tiny/heldout.txt")).unwrap();
    let lines: Vec<&str> = heldout.lines().chain(TRICKY.iter().copied()).collect();
    assert!(lines.len() > 200);
    for (gguf, folder) in PAIRS {
        let m = Model::open(&convert(&fixture(gguf), tmp.path(), "t.tern")).unwrap();
        let rebuilt = TextTokenizer::from_json(m.file().tokenizer_json(), m.config().vocab_size).unwrap();
        let own = std::fs::read_to_string(fixture(folder).join("tokenizer.json")).unwrap();
        let own = TextTokenizer::from_json(&own, m.config().vocab_size).unwrap();
        for line in &lines {
            assert_eq!(rebuilt.encode(line).unwrap(), own.encode(line).unwrap(), "{gguf}: {line:?}");
            assert_eq!(rebuilt.encode_literal(line).unwrap(), own.encode_literal(line).unwrap(), "{gguf}: {line:?}");
        }
        // The whole text at once too: runs of newlines between paragraphs.
        assert_eq!(rebuilt.encode(&heldout).unwrap(), own.encode(&heldout).unwrap(), "{gguf}");
        let ids = own.encode(&heldout).unwrap();
        assert_eq!(rebuilt.decode(&ids).unwrap(), own.decode(&ids).unwrap(), "{gguf}");
    }
}

#[test]
fn gguf_metadata_becomes_the_files_chat_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Model::open(&convert(&fixture(PAIRS[0].0), tmp.path(), "m.tern")).unwrap();
    let c = m.config();
    // eos (<|end_of_text|>) and <|eot_id|>, which llama.cpp also ends a turn at.
    assert_eq!((c.bos_id, c.eos_ids().collect::<Vec<_>>(), c.pad_id), (Some(506), vec![507, 510], Some(507)));
    assert_eq!(c.chat.bos_token.as_deref(), Some("<|begin_of_text|>"));
    assert_eq!(c.chat.eos_token.as_deref(), Some("<|end_of_text|>"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("bitnet-2b-tiny/tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(c.chat.chat_template.as_deref(), cfg["chat_template"].as_str());
}

/// The rebuilt tokenizer.json is the model's own, section by section (the split regex
/// included, which the small fixture vocabularies cannot always tell apart by encoding).
#[test]
fn rebuilt_tokenizer_json_is_the_models_own() {
    let tmp = tempfile::tempdir().unwrap();
    for (gguf, folder) in PAIRS {
        let m = Model::open(&convert(&fixture(gguf), tmp.path(), "t.tern")).unwrap();
        let rebuilt: serde_json::Value = serde_json::from_str(m.file().tokenizer_json()).unwrap();
        let own: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(folder).join("tokenizer.json")).unwrap()).unwrap();
        for key in ["normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens", "model"] {
            assert_eq!(rebuilt[key], own[key], "{gguf}: section {key}");
        }
    }
}
