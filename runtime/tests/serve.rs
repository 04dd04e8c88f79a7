//! `tern serve` as a client sees it: a real server process on a free port, driven over
//! HTTP by reqwest, with the demo model (fixtures/austen-tiny).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The demo model, converted once for every test of this file.
fn demo_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        // Replaced by rename (tern-convert's atomic output), so a server of an earlier run is safe.
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-demo.tern");
        let opts = tern_convert::Options { embed: tern_format::Encoding::F16, progress: false, pause_per_tensor: None };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/austen-tiny");
        tern_convert::convert(&dir, &out, &opts).unwrap();
        out
    })
}

/// A running `tern serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", demo_model().to_str().unwrap(), "--port", "0", "--threads", "1"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("startup line {line:?}")).to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(server.url(path)).body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap())
}

/// The `data:` payloads of a whole SSE body, `[DONE]` included.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    body.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").expect(e).to_string()).collect()
}

/// The text of a completion (`choices[0].text`) or a chat reply (`.message.content`).
fn text(v: &Value) -> String {
    let c = &v["choices"][0];
    c["text"].as_str().or(c["message"]["content"].as_str()).unwrap_or_else(|| panic!("{v}")).to_string()
}

/// What `tern generate --temp 0` prints after the prompt.
fn generate(prompt: &str, n: usize) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["generate", demo_model().to_str().unwrap(), "-p", prompt, "-n", &n.to_string(), "--temp", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_prefix(prompt).unwrap().strip_suffix('\n').unwrap().to_string()
}

fn assert_error(status: u16, body: &Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    let message = e["message"].as_str().unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(e["type"].is_string() && e.get("code").is_some(), "{body}");
}

const PROMPTS: [&str; 5] = [
    "It is a truth universally acknowledged",
    "Mr. Darcy",
    "She was",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma",
];

#[tokio::test]
async fn health_models_and_unknown_routes() {
    let s = Server::start(&[]);
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json_text().await, json!({"status": "ok"}));
    let models: Value = client().get(s.url("/v1/models")).send().await.unwrap().json_text().await;
    assert_eq!(models["object"], "list");
    let stem = demo_model().file_stem().unwrap().to_str().unwrap();
    assert_eq!(models["data"][0]["id"], stem);
    assert_eq!(models["data"][0]["object"], "model");
    let r = client().get(s.url("/v1/nothing")).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json_text().await, 404, "no route GET /v1/nothing");
    let r = client().get(s.url("/v1/completions")).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json_text().await, 405, "/v1/completions does not take GET");
}

#[tokio::test]
async fn completions_return_the_text_of_generate() {
    let s = Server::start(&[]);
    for prompt in &PROMPTS[..3] {
        let (status, v) =
            post(&s, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 20, "temperature": 0})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert!(!text(&v).is_empty(), "{v}");
        assert_eq!(text(&v), generate(prompt, 20), "prompt {prompt:?}");
        let u = &v["usage"];
        assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
        if v["choices"][0]["finish_reason"] == "length" {
            assert_eq!(u["completion_tokens"], 20);
        }
    }
}

#[tokio::test]
async fn chat_streams_the_same_text_as_it_returns_whole() {
    let s = Server::start(&[]);
    let body =
        json!({"messages": [{"role": "user", "content": "Who is Mr. Darcy?"}], "max_tokens": 24, "temperature": 0});
    let (status, whole) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let finish = whole["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(["stop", "length"].contains(&finish), "{whole}");

    // The same reply as `tern chat --temp 0` gives to that message.
    let mut chat = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["chat", demo_model().to_str().unwrap(), "--temp", "0", "-n", "24"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut chat.stdin.take().unwrap(), b"Who is Mr. Darcy?\n").unwrap();
    let out = String::from_utf8(chat.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out.trim_end_matches('\n'), text(&whole));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = client().post(s.url("/v1/chat/completions")).body(streamed.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_events(&r.text().await.unwrap());
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, text(&whole));
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], finish);
    assert_eq!(last_choice["delta"], json!({}));
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], whole["usage"]);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
}

#[tokio::test]
async fn streamed_completions_end_with_a_finish_reason_and_done() {
    let s = Server::start(&[]);
    let body = json!({"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "stream": true});
    let r = client().post(s.url("/v1/completions")).body(body.to_string()).send().await.unwrap();
    let events = sse_events(&r.text().await.unwrap());
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion" && c.get("usage").is_none()));
    let streamed: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(streamed, generate(PROMPTS[1], 12));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[tokio::test]
async fn a_stop_string_split_across_tokens_ends_the_text_before_it() {
    let s = Server::start(&[]);
    let body = json!({"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0, "stream": true});
    let r = client().post(s.url("/v1/completions")).body(body.to_string()).send().await.unwrap();
    let events = sse_events(&r.text().await.unwrap());
    let pieces: Vec<String> = events[..events.len() - 2]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    // A stop string made of the end of one token's text and the start of the next's.
    let i = (2..pieces.len() - 1).find(|&i| pieces[i].len() >= 2 && pieces[i + 1].len() >= 2).unwrap();
    let (a, b) = (&pieces[i], &pieces[i + 1]);
    let stop = format!("{}{}", &a[a.len() - 2..], &b[..2]);
    let before: String = pieces[..i].concat() + &a[..a.len() - 2];
    let full: String = pieces.concat();
    assert!(!before.contains(&stop), "the stop string {stop:?} is found earlier in {full:?}");
    let (status, v) =
        post(&s, "/v1/completions", &json!({"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0, "stop": stop}))
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(text(&v), before, "stop {stop:?} in {full:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn concurrent_requests_equal_their_solo_results() {
    let s = Server::start(&["--parallel", "3"]);
    let bodies: Vec<Value> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Greedy and seeded sampling, different lengths.
            let t = if i % 2 == 0 { 0.0 } else { 0.9 };
            json!({"prompt": p, "max_tokens": 16 + 5 * i, "temperature": t, "seed": 40 + i})
        })
        .collect();
    let mut solo = Vec::new();
    for b in &bodies {
        let (status, v) = post(&s, "/v1/completions", b).await;
        assert_eq!(status, 200, "{v}");
        solo.push(text(&v));
    }
    let together = futures_util::future::join_all(bodies.iter().map(|b| post(&s, "/v1/completions", b))).await;
    for (i, (status, v)) in together.iter().enumerate() {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(text(v), solo[i], "request {i} beside others");
    }
    for i in [0, 2, 4] {
        assert_eq!(solo[i], generate(PROMPTS[i], 16 + 5 * i), "greedy request {i} and tern generate");
    }
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let s = Server::start(&["--ctx-size", "32"]);
    let send = |body: String| {
        let url = s.url("/v1/completions");
        async move {
            let r = client().post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json_text().await)
        }
    };
    let (st, v) = send("{\"prompt\": ".into()).await;
    assert_error(st, &v, 400, "not valid JSON");
    let (st, v) = send("[1, 2]".into()).await;
    assert_error(st, &v, 400, "must be a JSON object");
    let (st, v) = send(json!({"prompt": 5}).to_string()).await;
    assert_error(st, &v, 400, "prompt must be a string");
    assert_eq!(v["error"]["param"], "prompt");
    let (st, v) = send(json!({"prompt": "a", "max_tokens": "ten"}).to_string()).await;
    assert_error(st, &v, 400, "max_tokens must be an integer");
    let (st, v) = send(json!({"prompt": "a", "temperature": 3}).to_string()).await;
    assert_error(st, &v, 400, "temperature must be in [0, 2] (got 3)");
    let (st, v) = send(json!({"prompt": "a", "top_p": 0}).to_string()).await;
    assert_error(st, &v, 400, "top_p must be in (0, 1]");
    let (st, v) = send(json!({"prompt": "a", "stop": [1]}).to_string()).await;
    assert_error(st, &v, 400, "stop must be a string or a list of strings");
    let (st, v) = send(json!({"prompt": "a", "stream": "yes"}).to_string()).await;
    assert_error(st, &v, 400, "stream must be true or false");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(10);
    let (st, v) = send(json!({"prompt": long}).to_string()).await;
    assert_error(st, &v, 400, "but the context is 32 positions");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (st, v) = send(json!({"prompt": "Emma", "max_tokens": 100}).to_string()).await;
    assert_error(st, &v, 400, "max_tokens 100 needs");
    let (st, v) = send(format!("{{\"prompt\": \"{}\"}}", "a".repeat(2 << 20))).await;
    assert_error(st, &v, 413, "over the limit of 1048576 bytes");

    let chat = "/v1/chat/completions";
    let (st, v) = post(&s, chat, &json!({"messages": []})).await;
    assert_error(st, &v, 400, "messages is empty");
    let (st, v) = post(&s, chat, &json!({"messages": [{"role": "wizard", "content": "hi"}]})).await;
    assert_error(st, &v, 400, "role \"wizard\"");
    let (st, v) = post(&s, chat, &json!({"messages": [{"role": "user", "content": 7}]})).await;
    assert_error(st, &v, 400, "messages[0]: content must be a string");
    // The server still serves.
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "Emma", "max_tokens": 3})).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn api_key_guards_the_v1_routes() {
    let s = Server::start(&["--api-key", "sesame"]);
    let body = json!({"prompt": "Emma", "max_tokens": 2}).to_string();
    let r = client().post(s.url("/v1/completions")).body(body.clone()).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json_text().await, 401, "missing or wrong API key");
    let r = client().get(s.url("/v1/models")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().post(s.url("/v1/completions")).bearer_auth("sesame").body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client().get(s.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_full_queue_gets_503() {
    // Steps slowed down so that the one slot stays busy.
    let s = Server::start_with_env(&["--parallel", "1", "--queue", "1"], &[("TERN_SERVE_STEP_PAUSE_MS", "20")]);
    let long = json!({"prompt": "Emma", "max_tokens": 200, "stream": true}).to_string();
    // The first holds the slot (its first chunk came), the second waits in the queue (its
    // stream's headers came: it was queued), the third finds no room.
    let mut first = client().post(s.url("/v1/completions")).body(long.clone()).send().await.unwrap();
    assert!(first.chunk().await.unwrap().is_some());
    let _second = client().post(s.url("/v1/completions")).body(long).send().await.unwrap();
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "Emma", "max_tokens": 2})).await;
    assert_error(st, &v, 503, "every slot is busy and the queue is full");
    assert_eq!(v["error"]["code"], "server_busy");
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_slot() {
    // 200 tokens at 20 ms a step take 4 s or more; the next request must not wait for them.
    let s = Server::start_with_env(&["--parallel", "1"], &[("TERN_SERVE_STEP_PAUSE_MS", "20")]);
    let long = json!({"prompt": "Emma", "max_tokens": 200, "stream": true}).to_string();
    let mut r = client().post(s.url("/v1/completions")).body(long).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    let t0 = Instant::now();
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "Mr.", "max_tokens": 3})).await;
    assert_eq!(st, 200, "{v}");
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(3), "the next request waited {waited:?}");

    // A client that gives up on a whole (not streamed) answer frees its slot too.
    let long = json!({"prompt": "Emma", "max_tokens": 200}).to_string();
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    assert!(quick.post(s.url("/v1/completions")).body(long).send().await.is_err());
    let t0 = Instant::now();
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "Mr.", "max_tokens": 3})).await;
    assert_eq!(st, 200, "{v}");
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(3), "after a whole answer's client left, the next request waited {waited:?}");
}

/// A body as JSON.
trait JsonText {
    async fn json_text(self) -> Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> Value {
        let t = self.text().await.unwrap();
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t:?}"))
    }
}
