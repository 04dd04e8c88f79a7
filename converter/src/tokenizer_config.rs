//! `tokenizer_config.json` -> the chat template and special-token strings of a `.tern` file.
//!
//! The file is optional. `chat_template` is a string, or (older multi-template files) a list
//! of `{"name", "template"}` objects, of which the one named `"default"` is kept; newer
//! transformers versions save the template beside it as `chat_template.jinja` instead.
//! `bos_token` / `eos_token` are strings or added-token objects (`{"content": ...}`).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use tern_format::ChatMetadata;

/// Reads the chat metadata of the checkpoint folder `dir` (empty without the files).
pub fn read_chat_metadata(dir: &Path) -> Result<ChatMetadata> {
    let path = dir.join("tokenizer_config.json");
    let mut meta = if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        parse(&text, &path)?
    } else {
        ChatMetadata::default()
    };
    let jinja = dir.join("chat_template.jinja");
    if meta.chat_template.is_none() && jinja.exists() {
        let text = std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?;
        meta.chat_template = Some(text);
    }
    Ok(meta)
}

/// Parses the text of a `tokenizer_config.json` (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<ChatMetadata> {
    let json: Value =
        serde_json::from_str(text).with_context(|| format!("{}: not a valid tokenizer_config.json", path.display()))?;
    let at = |field: &str| format!("{}: field {field}", path.display());
    let chat_template = match json.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let default = list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
            match default.map(|t| t.get("template")) {
                Some(Some(Value::String(s))) => Some(s.clone()),
                Some(_) => bail!("{}: the \"default\" entry has no \"template\" string", at("chat_template")),
                None => bail!("{}: a list of templates without one named \"default\"", at("chat_template")),
            }
        }
        Some(other) => bail!("{}: {} is neither a string nor a list of templates", at("chat_template"), kind(other)),
    };
    let token = |field: &str| -> Result<Option<String>> {
        match json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => bail!("{}: an added-token object without a \"content\" string", at(field)),
            },
            Some(other) => bail!("{}: {} is not a token string", at(field), kind(other)),
        }
    };
    Ok(ChatMetadata { chat_template, bos_token: token("bos_token")?, eos_token: token("eos_token")? })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ChatMetadata> {
        parse(text, Path::new("m/tokenizer_config.json"))
    }

    #[test]
    fn template_and_tokens_in_each_spelling() {
        let llama3 = r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"}"#;
        let m = p(llama3).unwrap();
        assert_eq!(m.bos_token.as_deref(), Some("<|begin_of_text|>"));
        assert_eq!(m.eos_token.as_deref(), Some("<|eot_id|>"));
        assert!(m.chat_template.unwrap().starts_with("{{ bos_token }}"));
        let objects = r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": null,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#;
        let m = p(objects).unwrap();
        assert_eq!((m.bos_token.as_deref(), m.eos_token, m.chat_template.as_deref()), (Some("<s>"), None, Some("D")));
        assert_eq!(p("{}").unwrap(), ChatMetadata::default());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (r#"{"chat_template": 3}"#, "field chat_template: a number is neither a string nor a list"),
            (r#"{"chat_template": [{"name": "x", "template": "T"}]}"#, "without one named \"default\""),
            (r#"{"eos_token": {"lstrip": true}}"#, "field eos_token: an added-token object without"),
            (r#"{"bos_token": [1]}"#, "field bos_token: a list is not a token string"),
            ("{", "not a valid tokenizer_config.json"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", p(text).unwrap_err());
            assert!(err.starts_with("m/tokenizer_config.json: ") && err.contains(want), "{text}: {err}");
        }
    }
}
