//! The OpenAI API's requests and responses: a request body checked field by field (a
//! wrong type or a value out of range names the field and what it takes) and turned into
//! an engine [`Job`]; the JSON of responses, stream chunks and errors.
//!
//! Prompts are rendered and checked as `tern generate` (completions: the raw prompt, with
//! BOS as the tokenizer adds it) and the Python binding (chat: the model's template
//! through [`crate::chat_template::prompt_ids`], so text a user sends never becomes
//! special tokens) render and check them; sampling settings resolve through
//! [`crate::args::Sampling`] against the model file's defaults.

use super::engine::{Event, Finish, Job};
use crate::args::{self, Sampling};
use crate::chat_template::{self, Message};
use crate::session::{self, Session};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedSender;

/// An error response: the HTTP status and OpenAI's `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about one field.
    pub fn field(param: &str, message: String) -> Self {
        ApiError { status: 400, message, kind: "invalid_request_error", param: Some(param.into()), code: None }
    }

    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: String) -> Self {
        ApiError { status, message, kind, param: None, code }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Completion => "cmpl-",
        }
    }

    pub fn object(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }
}

/// A checked request: the engine's job (without its channel) and how to answer.
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub sampling: crate::sampler::SamplerConfig,
    pub seed: u64,
    pub stop: Vec<String>,
    pub end_ids: Vec<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

impl Prepared {
    pub fn job(self, events: UnboundedSender<Event>) -> Job {
        Job {
            prompt: self.prompt,
            max_new: self.max_new,
            sampler: self.sampling,
            seed: self.seed,
            stop: self.stop,
            end_ids: self.end_ids,
            events,
        }
    }
}

/// Stop strings a request may give (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// Parses and checks a request body for `kind` against a context of `ctx` positions.
pub fn prepare(session: &Session, kind: Kind, ctx: usize, body: &[u8]) -> Result<Prepared, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_request_error", None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(400, "invalid_request_error", None, "the body must be a JSON object".into()));
    };
    let f = Fields(&obj);
    // Fields with one meaning for both endpoints.
    if let Some(n) = f.uint("n")? {
        if n != 1 {
            return Err(ApiError::field("n", format!("n must be 1 (got {n}): tern returns one choice")));
        }
    }
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::field("stream_options", "stream_options must be an object".into())),
    };
    let max_tokens = match f.uint("max_completion_tokens")? {
        Some(n) => Some(("max_completion_tokens", n)),
        None => f.uint("max_tokens")?.map(|n| ("max_tokens", n)),
    };
    if let Some((name, 0)) = max_tokens {
        return Err(ApiError::field(name, format!("{name} must be an integer ≥ 1 (got 0)")));
    }
    let temperature = f.number("temperature")?;
    if let Some(t) = temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::field("temperature", format!("temperature must be in [0, 2] (got {t})")));
    }
    let top_p = f.number("top_p")?;
    if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::field("top_p", format!("top_p must be in (0, 1] (got {p})")));
    }
    let seed = f.uint("seed")?;
    let mut stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::field("stop", "stop must be a string or a list of strings".into()))?,
        Some(_) => return Err(ApiError::field("stop", "stop must be a string or a list of strings".into())),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::field("stop", format!("stop takes at most {MAX_STOPS} strings (got {})", stop.len())));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "stop strings must not be empty".into()));
    }

    let (model, tok) = (&session.model, &session.tok);
    let (prompt, end_ids) = match kind {
        Kind::Completion => {
            let text = match obj.get("prompt") {
                Some(Value::String(s)) => s,
                None => return Err(ApiError::field("prompt", "prompt is required (a string)".into())),
                Some(_) => return Err(ApiError::field("prompt", "prompt must be a string".into())),
            };
            let ids = session.prompt_ids(text).map_err(|e| server_error(&e))?;
            (ids, session::eos_ids(model.config()))
        }
        Kind::Chat => {
            let messages = messages(&obj)?;
            chat_template::check_messages(&messages).map_err(|e| ApiError::field("messages", e.0))?;
            let (ids, template_stops) = chat_template::prompt_ids(model, tok, &messages)
                .map_err(|e| ApiError::field("messages", format!("{e:#}")))?;
            stop.extend(template_stops);
            (ids, crate::chat::end_ids(model, tok))
        }
    };
    if prompt.len() >= ctx {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::field(
                if kind == Kind::Chat { "messages" } else { "prompt" },
                format!(
                    "the prompt has {} tokens, but the context is {ctx} positions (room for the prompt and at least \
                     one generated token); shorten the prompt",
                    prompt.len()
                ),
            )
        });
    }
    let room = ctx - prompt.len();
    let max_new = match max_tokens {
        Some((name, n)) if n as usize > room => {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::field(
                    name,
                    format!(
                        "the prompt ({} tokens) plus {name} {n} needs {} positions, but the context is {ctx}; lower \
                         {name} to at most {room}",
                        prompt.len(),
                        prompt.len() + n as usize
                    ),
                )
            });
        }
        Some((_, n)) => n as usize,
        None => room,
    };
    let sampling =
        Sampling { temperature: temperature.map(|t| t as f32), top_p: top_p.map(|p| p as f32), ..Default::default() }
            .resolve(&model.config().generation)
            .map_err(|e| ApiError::new(400, "invalid_request_error", None, e.0))?;
    Ok(Prepared { prompt, max_new, sampling, seed: args::seed_or_clock(seed), stop, end_ids, stream, include_usage })
}

/// A failure that is not the request's fault.
pub fn server_error(e: &anyhow::Error) -> ApiError {
    ApiError::new(500, "server_error", None, format!("{e:#}"))
}

/// The request's `messages`: objects with a `role` and a `content` (a string, or a list
/// of text parts).
fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        None => return Err(ApiError::field("messages", "messages is required (a list of messages)".into())),
        Some(_) => return Err(ApiError::field("messages", "messages must be a list of messages".into())),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let bad = |what: &str| ApiError::field(&param, format!("{param}: {what}"));
            let Value::Object(m) = m else { return Err(bad("must be an object with role and content")) };
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| bad("role must be a string"))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if role == "assistant" => String::new(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(bad("content parts must be {\"type\": \"text\", \"text\": string}")),
                    })
                    .collect::<Result<String, _>>()?,
                _ => return Err(bad("content must be a string or a list of text parts")),
            };
            Ok(Message::new(role, &content))
        })
        .collect()
}

/// Typed reads of optional fields (absent or null: `None`).
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_u64().ok_or_else(|| ApiError::field(name, format!("{name} must be an integer ≥ 0 (got {v})")))
            })
            .transpose()
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| ApiError::field(name, format!("{name} must be a number (got {v})"))))
            .transpose()
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_bool().ok_or_else(|| ApiError::field(name, format!("{name} must be true or false (got {v})")))
            })
            .transpose()
    }
}

/// The parts every response and chunk of one request shares.
pub struct Reply {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Reply {
    pub fn new(kind: Kind, model: &str) -> Self {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = format!("{}{:016x}", kind.id_prefix(), args::seed_or_clock(None) ^ u64::from(std::process::id()));
        Reply { kind, id, created, model: model.to_string() }
    }

    fn envelope(&self, stream: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.kind.object(stream),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole answer of a request that does not stream.
    pub fn complete(&self, text: &str, finish: Finish, usage: Usage) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.reason(),
            }),
            Kind::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish.reason()}),
        };
        let mut v = self.envelope(false, json!([choice]));
        v["usage"] = usage.json();
        v
    }

    /// A stream chunk: the role first (chat), then text, then the finish reason alone.
    /// With `include_usage`, every chunk has `"usage": null` (OpenAI's shape).
    pub fn chunk(&self, piece: Piece, include_usage: bool) -> Value {
        let (content, finish) = match piece {
            Piece::Start => (None, None),
            Piece::Text(t) => (Some(t), None),
            Piece::End(f) => (None, Some(f.reason())),
        };
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match (piece, content) {
                    (Piece::Start, _) => json!({"role": "assistant", "content": ""}),
                    (_, Some(t)) => json!({"content": t}),
                    _ => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = self.envelope(true, json!([choice]));
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The last chunk when the request asked for usage: no choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.envelope(true, json!([]));
        v["usage"] = usage.json();
        v
    }
}

/// One part of a stream.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    Start,
    Text(&'a str),
    End(Finish),
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}
