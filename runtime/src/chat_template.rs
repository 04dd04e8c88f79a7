//! The model's own chat template, rendered as Hugging Face's `apply_chat_template` renders
//! it, and turned into token ids so that only the template's own structure can become
//! special tokens.
//!
//! Rendering follows transformers' `render_jinja_template`: Jinja with `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods (`.strip()`, `.title()`...), the
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the
//! function `raise_exception(msg)`. A model without a template gets [`FALLBACK_TEMPLATE`].
//!
//! **What a user types stays text.** Each message's content is rendered between two
//! private-use marker characters, so that after rendering tern knows which characters came
//! from the template and which from a message. Only template text is searched for added
//! tokens (`<|eot_id|>`...); message text is encoded with special-token matching off, so a
//! user who types `<|eot_id|>` gets the tokens of those characters, never the end-of-turn
//! id. The pieces between the template's special tokens are encoded whole, exactly as the
//! `tokenizers` library splits a text at its added tokens and encodes each piece, so for
//! messages without special-looking text the ids equal Hugging Face's
//! `apply_chat_template(tokenize=True)`. `trim`/`strip` see through the markers (they trim
//! the content inside them), so templates that trim messages render as in Python.

use crate::args::ArgError;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{anyhow, bail, Result};
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State};

/// The template used when a model file has none: BOS, one `Role: text` line per message
/// (`System: `, `User: `, `Assistant: `), then `Assistant:`. A base model (such as the
/// demo) continues it as text; replies end at [`FALLBACK_STOP`], where the model starts
/// the next user line itself.
pub const FALLBACK_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{{ message['role'] | capitalize + ': ' + message['content'] | trim + '\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// Where a reply under [`FALLBACK_TEMPLATE`] ends: the start of a next user line.
pub const FALLBACK_STOP: &str = "\nUser:";

/// Checks a conversation given by a caller (Python, a server): at least one message, and
/// roles that chat templates know.
pub fn check_messages(messages: &[Message]) -> Result<(), ArgError> {
    if messages.is_empty() {
        return Err(ArgError("messages is empty: a chat needs at least one message".into()));
    }
    for (i, m) in messages.iter().enumerate() {
        if !["system", "user", "assistant"].contains(&m.role.as_str()) {
            return Err(ArgError(format!(
                "messages[{i}]: role {:?} is not one of \"system\", \"user\", \"assistant\"",
                m.role
            )));
        }
    }
    Ok(())
}

/// The token ids of `messages` rendered for the model's reply (its template, or the
/// fallback), and the stop strings the reply needs (the fallback's).
pub fn prompt_ids(model: &Model, tok: &TextTokenizer, messages: &[Message]) -> Result<(Vec<u32>, Vec<String>)> {
    check_messages(messages)?;
    let template = for_model(model, tok)?;
    let ids = template.encode(tok, messages, true)?;
    let stops = if template.is_fallback() { vec![FALLBACK_STOP.to_string()] } else { Vec::new() };
    Ok((ids, stops))
}

/// Marks the start and the end of a message's content in a rendered template. Private-use
/// characters; any in a message are replaced by U+FFFD before rendering.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// Template instructions a rendering may execute (a bound on hostile templates in a file).
const FUEL: u64 = 5_000_000;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// The chat template of a model file (with the special-token strings stored beside it), or
/// the fallback when it has none.
pub fn for_model(model: &Model, tok: &TextTokenizer) -> Result<ChatTemplate> {
    let c = model.config();
    let stored = &c.chat;
    let text = |id: Option<u32>| id.and_then(|id| tok.token_text(id));
    let bos = stored.bos_token.clone().or_else(|| text(c.bos_id));
    let eos = stored.eos_token.clone().or_else(|| text(c.eos_id));
    ChatTemplate::new(stored.chat_template.as_deref(), bos.as_deref(), eos.as_deref())
}

/// A compiled chat template with the special-token strings it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    fallback: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `template` (the model's, or [`FALLBACK_TEMPLATE`] when `None`).
    pub fn new(template: Option<&str>, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("chat template syntax: {e}"))?,
        );
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(string_methods);
        env.add_filter("trim", |s: String| trim_marked(&s, true, true));
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let source = template.unwrap_or(FALLBACK_TEMPLATE).to_string();
        env.add_template_owned("chat", source)
            .map_err(|e| anyhow!("the model's chat template does not compile: {e}"))?;
        Ok(ChatTemplate {
            env,
            fallback: template.is_none(),
            bos_token: bos_token.unwrap_or_default().into(),
            eos_token: eos_token.unwrap_or_default().into(),
        })
    }

    /// Whether this is [`FALLBACK_TEMPLATE`] (the model file has no template).
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The rendered text, as `apply_chat_template(messages, tokenize=False)` gives it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let marked = self.render_marked(messages, add_generation_prompt)?;
        Ok(marked.chars().filter(|&c| c != OPEN && c != CLOSE).collect())
    }

    /// The rendering with each message's content between [`OPEN`] and [`CLOSE`].
    fn render_marked(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let clean = |s: &str| s.replace([OPEN, CLOSE], "\u{FFFD}");
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let content = format!("{OPEN}{}{CLOSE}", clean(&m.content));
                let map: std::collections::BTreeMap<&str, String> =
                    [("role", clean(&m.role)), ("content", content)].into_iter().collect();
                Value::from(map)
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let tmpl = self.env.get_template("chat").map_err(|e| anyhow!("chat template: {e}"))?;
        // raise_exception's message is in the error's text.
        tmpl.render(ctx).map_err(|e| anyhow!("the chat template failed on this conversation: {e}"))
    }

    /// The token ids of the rendered conversation. Special tokens come only from the
    /// template's own text (see the module documentation).
    pub fn encode(&self, tok: &TextTokenizer, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let marked = self.render_marked(messages, add_generation_prompt)?;
        encode_marked(tok, &marked)
    }
}

/// Encodes a marked rendering: template text is split at added tokens, and each piece
/// between them (template text and message text together) is encoded literally.
fn encode_marked(tok: &TextTokenizer, marked: &str) -> Result<Vec<u32>> {
    let added = tok.added_tokens();
    let mut ids = Vec::new();
    let mut piece = String::new();
    let mut in_content = false;
    let mut rest = marked;
    while let Some(c) = rest.chars().next() {
        if c == OPEN || c == CLOSE {
            if (c == OPEN) == in_content {
                bail!("chat template: a message's content was cut or repeated in a way tern cannot follow");
            }
            in_content = c == OPEN;
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if !in_content {
            // The longest added token that starts here (the list is longest first).
            if let Some((text, id)) = added.iter().find(|(t, _)| rest.starts_with(t.as_str())) {
                ids.extend(tok.encode_literal(&piece)?);
                piece.clear();
                ids.push(*id);
                rest = &rest[text.len()..];
                continue;
            }
        }
        piece.push(c);
        rest = &rest[c.len_utf8()..];
    }
    ids.extend(tok.encode_literal(&piece)?);
    Ok(ids)
}

/// Trims white space from the start and/or end of `s`, looking through the content markers:
/// the markers stay, the white space inside them goes as if they were not there.
fn trim_marked(s: &str, start: bool, end: bool) -> String {
    let is_text = |c: char| c != OPEN && c != CLOSE;
    let first = s.char_indices().find(|&(_, c)| is_text(c) && !c.is_whitespace()).map(|(i, _)| i);
    let last = s.char_indices().rev().find(|&(_, c)| is_text(c) && !c.is_whitespace()).map(|(i, c)| i + c.len_utf8());
    s.char_indices()
        .filter(|&(i, c)| {
            let before = start && first.is_none_or(|f| i < f);
            let after = end && last.is_none_or(|l| i >= l);
            !is_text(c) || !(before || after)
        })
        .map(|(_, c)| c)
        .collect()
}

/// Python's string methods (minijinja-contrib's pycompat), with `strip`, `lstrip` and
/// `rstrip` (no argument) seeing through the content markers as `trim` does.
fn string_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let (Some(s), true) = (value.as_str(), args.is_empty()) {
        let trimmed = match method {
            "strip" => Some(trim_marked(s, true, true)),
            "lstrip" => Some(trim_marked(s, true, false)),
            "rstrip" => Some(trim_marked(s, false, true)),
            _ => None,
        };
        if let Some(t) = trimmed {
            return Ok(Value::from(t));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_looks_through_markers() {
        let s = format!("  {OPEN}  hi there \n{CLOSE} ");
        assert_eq!(trim_marked(&s, true, true), format!("{OPEN}hi there{CLOSE}"));
        assert_eq!(trim_marked(&s, true, false), format!("{OPEN}hi there \n{CLOSE} "));
        assert_eq!(trim_marked(&format!("{OPEN} {CLOSE}"), true, true), format!("{OPEN}{CLOSE}"));
    }

    #[test]
    fn fallback_renders_plain_turns() {
        let t = ChatTemplate::new(None, Some("<s>"), Some("</s>")).unwrap();
        let msgs = [Message::new("system", "Be brief."), Message::new("user", "  Hello \n")];
        assert_eq!(t.render(&msgs, true).unwrap(), "<s>System: Be brief.\nUser: Hello\nAssistant:");
        assert_eq!(t.render(&msgs, false).unwrap(), "<s>System: Be brief.\nUser: Hello\n");
    }

    /// Meta's Llama 3 template as published in its tokenizer_config.json.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn llama3_template_renders_as_jinja() {
        let t = ChatTemplate::new(Some(LLAMA3), Some("<|begin_of_text|>"), Some("<|end_of_text|>")).unwrap();
        let msgs = [Message::new("user", " Hi! ")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let t = ChatTemplate::new(Some(src), None, None).unwrap();
        let err = t.render(&[Message::new("assistant", "x")], true).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{% for m in messages %}{{ m['role'].title() }}={{ m['content'].strip() }}|{% endfor %}";
        let t = ChatTemplate::new(Some(src), None, None).unwrap();
        assert_eq!(t.render(&[Message::new("user", " a b ")], false).unwrap(), "User=a b|");
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let src = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(src), None, None).unwrap();
        assert!(t.render(&[], false).is_err());
    }
}
