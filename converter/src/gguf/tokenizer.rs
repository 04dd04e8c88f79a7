//! A GGUF file's `tokenizer.ggml.*` metadata -> the Hugging Face `tokenizer.json` it came from.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the Llama-3 split is rebuilt.
//! llama.cpp's `src/llama-vocab.cpp` (`llama_vocab::impl::load`) maps the `tokenizer.ggml.pre`
//! names `llama3`, `llama-v3`, `llama-bpe` and `falcon3` to `LLAMA_VOCAB_PRE_TYPE_LLAMA3`
//! (with `ignore_merges` and a BOS); bitnet.cpp's `utils/convert-hf-to-gguf-bitnet.py`
//! (`get_vocab_base_pre`) writes `falcon_e` for tiiuae/Falcon-E, which ik_llama.cpp issue 555's
//! patch maps to the same type. bitnet.cpp's own 2B-4T file has no `.pre` (llama.cpp then
//! falls back to a "default" split that differs from the model's tokenizer); the model was
//! trained with the Llama-3 tokenizer, so `bitnet-*` files without `.pre` get the Llama-3 split.
//! Token types (`gguf-py/gguf/constants.py`, `TokenType`): 1 normal, 2 unknown, 3 control,
//! 4 user-defined, 5 unused, 6 byte. Control and user-defined tokens are the added tokens
//! (`convert_hf_to_gguf.py`, `get_vocab_base`: added special tokens become CONTROL, other added
//! tokens USER_DEFINED); unused ones (padding fillers) are left out.

use super::container::{Gguf, Value};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value as Json};

/// The split regex of Llama-3's `tokenizer.json` (`pre_tokenizer.pretokenizers[0]`), which
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` adapts to its own regex engine.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `.pre` names that mean the Llama-3 split.
const LLAMA3_PRES: &[&str] = &["llama-bpe", "llama3", "llama-v3", "falcon3", "falcon_e"];

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

/// What the tokenizer metadata gives the `.tern` file.
#[derive(Debug)]
pub struct Tokenizer {
    pub json: Vec<u8>,
    pub n_tokens: usize,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

fn key_str<'g>(g: &'g Gguf, key: &str) -> Result<Option<&'g str>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(v) => bail!("metadata key {key}: {} (expected a string)", v.kind()),
    }
}

fn key_array<'g>(g: &'g Gguf, key: &str) -> Result<Option<&'g [Value]>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => bail!("metadata key {key}: {} (expected an array)", v.kind()),
    }
}

/// Rebuilds the tokenizer; `bitnet_arch` allows a missing `.pre` (see the module docs).
pub fn rebuild(g: &Gguf, bitnet_arch: bool) -> Result<Tokenizer> {
    match key_str(g, "tokenizer.ggml.model")? {
        Some("gpt2") => {}
        Some(other) => bail!(
            "metadata key tokenizer.ggml.model: {other:?}; tern-convert rebuilds byte-level BPE (\"gpt2\") tokenizers \
             only: convert from the Hugging Face checkpoint instead"
        ),
        None => bail!("metadata key tokenizer.ggml.model: missing (the GGUF file has no tokenizer)"),
    }
    match key_str(g, "tokenizer.ggml.pre")? {
        Some(pre) if LLAMA3_PRES.contains(&pre) => {}
        None if bitnet_arch => {}
        Some(pre) => bail!(
            "metadata key tokenizer.ggml.pre: {pre:?} is not supported (tern-convert rebuilds the Llama-3 split of {}): \
             convert from the Hugging Face checkpoint instead",
            LLAMA3_PRES.join(", ")
        ),
        None => bail!("metadata key tokenizer.ggml.pre: missing, so the split regex is unknown"),
    }
    let tokens = key_array(g, "tokenizer.ggml.tokens")?.context("metadata key tokenizer.ggml.tokens: missing")?;
    let types = key_array(g, "tokenizer.ggml.token_type")?;
    if let Some(t) = types {
        if t.len() != tokens.len() {
            bail!("metadata key tokenizer.ggml.token_type: {} entries for {} tokens", t.len(), tokens.len());
        }
    }
    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut texts = Vec::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let text =
            tok.as_str().with_context(|| format!("metadata key tokenizer.ggml.tokens: entry {id} is not a string"))?;
        texts.push(text);
        let t = match types.map(|t| &t[id]) {
            None => 1,
            Some(v) => match *v {
                Value::I32(t) => i64::from(t),
                ref other => other.as_u64().map(|t| t as i64).with_context(|| {
                    format!("metadata key tokenizer.ggml.token_type: entry {id} is {}", other.kind())
                })?,
            },
        };
        match t {
            CONTROL | USER_DEFINED => added.push(json!({
                "id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": t == CONTROL,
            })),
            UNUSED => {}
            _ => {
                if vocab.insert(text.to_owned(), json!(id)).is_some() {
                    bail!("metadata key tokenizer.ggml.tokens: {text:?} appears twice (entry {id})");
                }
            }
        }
    }
    let merges = key_array(g, "tokenizer.ggml.merges")?
        .context("metadata key tokenizer.ggml.merges: missing (byte-level BPE needs its merges)")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = m
                .as_str()
                .and_then(|m| m.split_once(' '))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '));
            pair.map(|(a, b)| json!([a, b])).with_context(|| {
                format!("metadata key tokenizer.ggml.merges: entry {i} is not two tokens split by a space")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v.as_u64().filter(|&id| id < tokens.len() as u64);
                id.map(|id| Some(id as u32))
                    .with_context(|| format!("metadata key {key}: {v:?} is not a token id below {}", tokens.len()))
            }
        }
    };
    let bos_id = id("tokenizer.ggml.bos_token_id")?;
    let eos_id = id("tokenizer.ggml.eos_token_id")?;
    let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
    // llama.cpp ends a turn at the EOT token too: by key, or by the text `<|eot_id|>`.
    let eot =
        id("tokenizer.ggml.eot_token_id")?.or_else(|| texts.iter().position(|t| *t == "<|eot_id|>").map(|i| i as u32));
    if let (Some(_), Some(eot)) = (eos_id, eot) {
        if !eos_ids.contains(&eot) {
            eos_ids.push(eot);
        }
    }
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        None => true, // llama.cpp's default for the Llama-3 pre-tokenizer
        Some(Value::Bool(b)) => *b,
        Some(v) => bail!("metadata key tokenizer.ggml.add_bos_token: {} (expected a boolean)", v.kind()),
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = match (add_bos, bos_id) {
        (true, Some(bos)) => {
            let b = texts[bos as usize];
            let special = |type_id: u32| json!({"SpecialToken": {"id": b, "type_id": type_id}});
            let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
            json!({"type": "Sequence", "processors": [byte_level, {
                "type": "TemplateProcessing",
                "single": [special(0), seq("A", 0)],
                "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
                "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}},
            }]})
        }
        _ => byte_level,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": Json::Object(vocab), "merges": merges,
        },
    });
    let chat_template = key_str(g, "tokenizer.chat_template")?.map(str::to_owned);
    Ok(Tokenizer {
        json: serde_json::to_vec(&tokenizer).expect("a JSON value serializes"),
        n_tokens: tokens.len(),
        bos_id,
        eos_ids,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        bos_token: bos_id.map(|i| texts[i as usize].to_owned()),
        eos_token: eos_id.map(|i| texts[i as usize].to_owned()),
        chat_template,
    })
}
