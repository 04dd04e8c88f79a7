//! The one module that touches the `tokenizers` crate (it is generic-heavy and slow to
//! compile; keeping it behind a small non-generic API keeps rebuilds fast).

use anyhow::{anyhow, bail, Result};

/// A Hugging Face tokenizer loaded from the `tokenizer.json` embedded in a `.tern` file.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// A copy that treats special-token text as plain text (made on first use).
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// The added tokens, longest first (listed on first use).
    added: std::sync::OnceLock<Vec<(String, u32)>>,
}

impl TextTokenizer {
    /// Parses `tokenizer.json` and checks that every id it can produce is below `vocab_size`.
    pub fn from_json(json: &str, vocab_size: u32) -> Result<Self> {
        let inner: tokenizers::Tokenizer =
            json.parse().map_err(|e| anyhow!("embedded tokenizer.json is not a valid tokenizer: {e}"))?;
        let n = inner.get_vocab_size(true);
        if n > vocab_size as usize {
            bail!("embedded tokenizer has {n} tokens but the model's vocabulary is {vocab_size}");
        }
        Ok(TextTokenizer { inner, literal: std::sync::OnceLock::new(), added: std::sync::OnceLock::new() })
    }

    /// Encodes as Hugging Face does, with the special tokens its post-processor adds (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes without special tokens (for scoring a text as a plain token stream).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize the text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `text` as plain text: special-token strings in it (`<|eot_id|>`) are not
    /// matched, and no post-processor adds BOS. What a user typed, inside a chat template.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let literal = self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = literal.encode(text, false).map_err(|e| anyhow!("cannot tokenize the text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The added tokens (text, id), longest text first: where the tokenizer splits a text
    /// before its model runs.
    pub fn added_tokens(&self) -> &[(String, u32)] {
        self.added.get_or_init(|| {
            let mut v: Vec<(String, u32)> =
                self.inner.get_added_tokens_decoder().into_iter().map(|(id, t)| (t.content, id)).collect();
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
            v
        })
    }

    /// The id of a token given by its text, if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a token id (as the vocabulary spells it), if there is one.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Decodes, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }
}

/// Turns a stream of token ids into text pieces that are always whole UTF-8 characters
/// and carry the right spaces: each piece is the difference between decoding a window
/// with and without the new tokens, so decoder rules that look at neighbours (leading
/// space strip, byte fallback) see the same context as a decode of the whole text.
pub struct Detokenizer<'t> {
    tok: &'t TextTokenizer,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix_start: usize,
    /// End of the part of the window already emitted.
    prefix_end: usize,
}

impl<'t> Detokenizer<'t> {
    /// `context`: tokens already shown (the prompt); only its last token is kept as context.
    pub fn new(tok: &'t TextTokenizer, context: &[u32]) -> Self {
        let ids: Vec<u32> = context.last().copied().into_iter().collect();
        let n = ids.len();
        Detokenizer { tok, ids, prefix_start: 0, prefix_end: n }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.tok.decode(&self.ids[self.prefix_start..self.prefix_end])?;
        let text = self.tok.decode(&self.ids[self.prefix_start..])?;
        // An unfinished multi-byte character decodes to U+FFFD: wait for its other bytes.
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.starts_with(&prefix) {
            let piece = text[prefix.len()..].to_string();
            self.prefix_start = self.prefix_end;
            self.prefix_end = self.ids.len();
            return Ok(piece);
        }
        Ok(String::new())
    }

    /// Whatever is still held back (e.g. an incomplete character at the end of the output).
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self.tok.decode(&self.ids[self.prefix_start..self.prefix_end])?;
        let text = self.tok.decode(&self.ids[self.prefix_start..])?;
        self.prefix_start = self.ids.len();
        self.prefix_end = self.ids.len();
        Ok(text.get(prefix.len()..).unwrap_or_default().to_string())
    }
}
