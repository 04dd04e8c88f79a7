//! The HTTP side: axum's router on hyper's HTTP/1 connections, run by tokio. Handlers
//! check a request ([`super::api`]), hand it to the engine and answer with its events,
//! whole or as Server-Sent Events.
//!
//! Limits: a header read timeout per connection, a body read timeout and a body size cap
//! per request; every failure is an OpenAI-shaped error, never a panic.

use super::api::{self, ApiError, Kind, Piece, Reply, Usage};
use super::engine::{Busy, Engine, Event};
use crate::session::Session;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// The largest request body accepted (413 above).
pub const MAX_BODY: usize = 1 << 20;
/// Time a client has to send a request's headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
pub struct Shared {
    pub session: Arc<Session>,
    pub engine: Engine,
    /// Positions per slot.
    pub ctx: usize,
    pub api_key: Option<String>,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
}

type AppState = State<Arc<Shared>>;

/// Serves connections from `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                eprintln!("tern: warning: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A connection's errors (a client that went away, a header timeout) end it alone.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: ApiError) -> Response {
    json_response(e.status, &e.body())
}

async fn health() -> Response {
    json_response(200, &json!({"status": "ok"}))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(ApiError::new(
        404,
        "invalid_request_error",
        Some("not_found"),
        format!("no route {method} {}: tern serves GET /health, GET /v1/models, POST /v1/chat/completions and POST /v1/completions", uri.path()),
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{} does not take {method}", uri.path());
    error_response(ApiError::new(405, "invalid_request_error", Some("method_not_allowed"), message))
}

/// With `--api-key`, `/v1/*` needs `Authorization: Bearer KEY`.
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &shared.api_key else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in time independent of where they differ.
    let same =
        given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0);
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "missing or wrong API key: send the server's --api-key as 'Authorization: Bearer KEY'".into(),
        ))
    }
}

async fn models(State(shared): AppState, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&shared, &headers) {
        return error_response(e);
    }
    let reply = Reply::new(Kind::Chat, &shared.model_name);
    json_response(
        200,
        &json!({"object": "list", "data": [{"id": shared.model_name, "object": "model", "created": reply.created, "owned_by": "tern"}]}),
    )
}

async fn chat(state: AppState, headers: HeaderMap, body: Body) -> Response {
    generate(state, headers, body, Kind::Chat).await.unwrap_or_else(error_response)
}

async fn completions(state: AppState, headers: HeaderMap, body: Body) -> Response {
    generate(state, headers, body, Kind::Completion).await.unwrap_or_else(error_response)
}

/// The body, at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let bad = |status, message: String| ApiError::new(status, "invalid_request_error", None, message);
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(bad(408, format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError {
            code: Some("request_too_large"),
            ..bad(413, format!("the request body is over the limit of {MAX_BODY} bytes"))
        }),
        Ok(Err(e)) => Err(bad(400, format!("reading the request body: {e}"))),
    }
}

async fn generate(State(shared): AppState, headers: HeaderMap, body: Body, kind: Kind) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    let body = read_body(body).await?;
    // Tokenizing and rendering a template can take a while for a long prompt: off the I/O thread.
    let s = Arc::clone(&shared);
    let prepared = tokio::task::spawn_blocking(move || api::prepare(&s.session, kind, s.ctx, &body))
        .await
        .map_err(|e| ApiError::new(500, "server_error", None, format!("checking the request: {e}")))??;
    let (stream, include_usage) = (prepared.stream, prepared.include_usage);
    let (tx, rx) = unbounded_channel();
    shared.engine.submit(prepared.job(tx)).map_err(|Busy| {
        ApiError::new(
            503,
            "server_error",
            Some("server_busy"),
            "every slot is busy and the queue is full; retry later (or start tern serve with more --parallel)".into(),
        )
    })?;
    let reply = Reply::new(kind, &shared.model_name);
    if stream {
        Ok(sse(reply, rx, include_usage))
    } else {
        whole(reply, rx).await
    }
}

/// A request's answer in one JSON body.
async fn whole(reply: Reply, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                let usage = Usage { prompt: prompt_tokens, completion: completion_tokens };
                return Ok(json_response(200, &reply.complete(&text, finish, usage)));
            }
            Event::Failed(m) => return Err(ApiError::new(500, "server_error", None, m)),
        }
    }
    Err(ApiError::new(500, "server_error", None, "the engine stopped before the answer ended".into()))
}

/// Where a stream is.
enum Phase {
    Start,
    Events,
    Ended,
}

/// A request's answer as Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`.
fn sse(reply: Reply, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let stream = futures_util::stream::unfold((rx, Phase::Start, reply), move |(mut rx, phase, reply)| async move {
        let data = |v: &Value| format!("data: {v}\n\n");
        let text = match phase {
            Phase::Ended => return None,
            // Chat streams open with the role (completions have no first chunk).
            Phase::Start if reply.kind == Kind::Chat => {
                let first = data(&reply.chunk(Piece::Start, include_usage));
                return Some((first, (rx, Phase::Events, reply)));
            }
            Phase::Start | Phase::Events => match rx.recv().await {
                Some(Event::Text(t)) => {
                    let chunk = data(&reply.chunk(Piece::Text(&t), include_usage));
                    return Some((chunk, (rx, Phase::Events, reply)));
                }
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    let mut s = data(&reply.chunk(Piece::End(finish), include_usage));
                    if include_usage {
                        s += &data(&reply.usage_chunk(Usage { prompt: prompt_tokens, completion: completion_tokens }));
                    }
                    s
                }
                Some(Event::Failed(m)) => data(&ApiError::new(500, "server_error", None, m).body()),
                None => data(&ApiError::new(500, "server_error", None, "the engine stopped".into()).body()),
            },
        };
        Some((text + "data: [DONE]\n\n", (rx, Phase::Ended, reply)))
    });
    let body = Body::from_stream(futures_util::StreamExt::map(stream, Ok::<_, std::convert::Infallible>));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    r
}
