//! The `tern` binary as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

/// A converted fixture in a temp dir.
fn converted(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{name}.tern"));
    let opts = tern_convert::Options { embed: tern_format::Encoding::F16, progress: false, pause_per_tensor: None };
    tern_convert::convert(&fixture(name), &out, &opts).unwrap();
    (dir, out)
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Exit code 1 with one `tern: error:` line naming `needle`, and no panic.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("tern: error:") && err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn verify_passes_intact_and_fails_damaged_files() {
    let (_d, model) = converted("tiny-untied");
    let m = model.to_str().unwrap();
    let ok = tern(&["verify", m]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).starts_with("OK: "), "{}", stdout(&ok));

    let bytes = std::fs::read(&model).unwrap();
    let file = tern_format::TernFile::parse(&bytes).unwrap();
    let last = file.tensors().last().unwrap();
    let mut bad = bytes.clone();
    bad[last.offset as usize + 7] ^= 1;
    let damaged = model.with_extension("bad.tern");
    std::fs::write(&damaged, &bad).unwrap();
    let o = tern(&["verify", damaged.to_str().unwrap()]);
    assert_error(&o, &format!("checksum mismatch in tensor {}", last.name));
}

#[test]
fn inspect_shows_config_and_tensors() {
    let (_d, model) = converted("tiny-odd-gqa-bf16");
    let o = tern(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("heads         6 (kv heads 2, head dim 16)"), "{s}");
    assert!(s.contains("blk.1.ffn_down"), "{s}");
    let line = s.lines().find(|l| l.starts_with("blk.0.ffn_gate ")).unwrap();
    // [200, 96] ternary: 200 rows × one 64-byte block.
    assert!(line.contains("[200, 96]") && line.contains("t2") && line.trim_end().ends_with("12800"), "{line}");
}

#[test]
fn generate_is_reproducible_and_reports_stats() {
    let (_d, model) = converted("tiny-tied");
    let m = model.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["generate", m, "-p", "It is a truth", "-n", "12"];
        all.extend_from_slice(args);
        tern(&all)
    };
    let a = run(&["--temp", "0"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stdout(&a).starts_with("It is a truth"));
    assert!(stdout(&a).len() > "It is a truth\n".len());
    assert_eq!(stdout(&a), stdout(&run(&["--temp", "0"])));
    let ids: Vec<u32> = serde_json::from_str(&stdout(&tern(&["tokenize", m, "It is a truth"]))).unwrap();
    let err = stderr(&a);
    let want = format!("prompt {} tok", ids.len());
    assert!(err.contains("load ") && err.contains(&want) && err.contains("generated 12 tok"), "{err}");
    // Sampling: a seed reproduces the text; the text does not depend on thread count.
    let s1 = run(&["--temp", "1.0", "--top-k", "0", "--top-p", "1", "--seed", "5", "--threads", "1"]);
    let s2 = run(&["--temp", "1.0", "--top-k", "0", "--top-p", "1", "--seed", "5", "--threads", "2"]);
    assert_eq!(stdout(&s1), stdout(&s2));
    let s3 = run(&["--temp", "1.0", "--top-k", "0", "--top-p", "1", "--seed", "6"]);
    assert_ne!(stdout(&s1), stdout(&s3));
}

#[test]
fn generate_until_the_context_ends_with_n_minus_one() {
    let (_d, model) = converted("tiny-tied");
    let m = model.to_str().unwrap();
    let ids: Vec<u32> = serde_json::from_str(&stdout(&tern(&["tokenize", m, "It is a truth"]))).unwrap();
    let o = tern(&["generate", m, "-p", "It is a truth", "-n", "-1", "--ctx-size", "40", "--temp", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = format!("generated {} tok", 40 - ids.len());
    assert!(stderr(&o).contains(&want), "{} lacks {want}", stderr(&o));
    assert_error(&tern(&["generate", m, "-p", "It is a truth", "-n", "50", "-c", "40"]), "--ctx-size is 40");
    assert_error(&tern(&["generate", m, "-p", "It is a truth", "-n", "-2"]), "-n -2");
    assert_error(&tern(&["generate", m, "-p", "It is a truth", "-c", "100000"]), "--ctx-size 100000");
}

#[test]
fn prompt_from_file_and_stdin() {
    let (d, model) = converted("tiny-tied");
    let m = model.to_str().unwrap();
    let p = d.path().join("prompt.txt");
    std::fs::write(&p, "It is a truth").unwrap();
    let from_file = tern(&["generate", m, "--prompt-file", p.to_str().unwrap(), "-n", "5", "--temp", "0"]);
    let from_arg = tern(&["generate", m, "-p", "It is a truth", "-n", "5", "--temp", "0"]);
    assert!(from_file.status.success());
    assert_eq!(stdout(&from_file), stdout(&from_arg));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["generate", m, "--prompt-file", "-", "-n", "5", "--temp", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"It is a truth").unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(stdout(&from_stdin), stdout(&from_arg));

    std::fs::write(&p, b"bad \xff utf8").unwrap();
    let o = tern(&["generate", m, "--prompt-file", p.to_str().unwrap()]);
    assert_error(&o, "not valid UTF-8 (bad byte at offset 4)");
}

#[test]
fn logits_json_shape() {
    let (_d, model) = converted("tiny-untied");
    let m = model.to_str().unwrap();
    let last = tern(&["logits", m, "--tokens", "1,17,300"]);
    assert!(last.status.success(), "{}", stderr(&last));
    let v: serde_json::Value = serde_json::from_str(&stdout(&last)).unwrap();
    assert_eq!(v["tokens"], serde_json::json!([1, 17, 300]));
    assert_eq!(v["logits"].as_array().unwrap().len(), 1);
    assert_eq!(v["logits"][0].as_array().unwrap().len(), 512);
    let all = tern(&["logits", m, "--tokens", "1,17,300", "--all"]);
    let w: serde_json::Value = serde_json::from_str(&stdout(&all)).unwrap();
    assert_eq!(w["logits"].as_array().unwrap().len(), 3);
    assert_eq!(w["logits"][2], v["logits"][0], "last row of --all equals the default output");
    assert_error(&tern(&["logits", m, "--tokens", "1,5000"]), "token id 5000");
}

#[test]
fn tokenize_prints_ids() {
    let (_d, model) = converted("tiny-tied");
    let o = tern(&["tokenize", model.to_str().unwrap(), "It is"]);
    let ids: Vec<u32> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.len() >= 3);
}

#[test]
fn bad_runtime_inputs_are_clean_errors() {
    let (d, model) = converted("tiny-tied");
    let m = model.to_str().unwrap();
    assert_error(&tern(&["generate", "/no/such/file.tern", "-p", "x"]), "/no/such/file.tern: cannot open");
    assert_error(&tern(&["generate", d.path().to_str().unwrap(), "-p", "x"]), "is a folder");
    let empty = d.path().join("empty.tern");
    std::fs::write(&empty, b"").unwrap();
    assert_error(&tern(&["verify", empty.to_str().unwrap()]), "is empty");
    assert_error(&tern(&["generate", m, "-p", "x", "--threads", "0"]), "--threads must be at least 1");
    assert_error(&tern(&["generate", m, "-p", "x", "-n", "500"]), "the model's context is 128");
    assert_error(&tern(&["generate", m, "-p", "x", "--top-p", "0"]), "--top-p");
    assert_error(&tern(&["generate", m, "-p", "x", "--temp", "-1"]), "--temp must be a number ≥ 0");
    assert_error(&tern(&["generate", m, "-p", "x", "--repeat-penalty", "-2"]), "--repeat-penalty");
    assert_error(&tern(&["generate", m, "-p", "x", "--stop", ""]), "--stop needs a non-empty string");
    assert_error(&tern(&["bench", m, "-p", "0", "-n", "0"]), "nothing to run: -p and -n are both 0");
    assert_error(&tern(&["bench", m, "-r", "0"]), "-r must be at least 1");
    assert_error(&tern(&["bench", m, "-t", "1,0"]), "thread counts must be ≥ 1");
    assert_error(
        &tern(&["bench", m, "-d", "100", "-p", "64", "-n", "8"]),
        "-d 100 plus the larger of -p 64 and -n 8 needs 164 positions, but the model's context is 128",
    );
    // A truncated copy is refused by generate as well as verify.
    let bytes = std::fs::read(&model).unwrap();
    let cut = d.path().join("cut.tern");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert_error(&tern(&["generate", cut.to_str().unwrap(), "-p", "x"]), "truncated");
    // -n 0 and an empty prompt are fine. With -n 0 the prompt still runs: its rate is a
    // measured one (a 4-layer model does not reach a million tokens a second here).
    let o = tern(&["generate", m, "-p", "x", "-n", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "x\n");
    let err = stderr(&o);
    let prompt = err.split("| prompt ").nth(1).expect(&err);
    let rate: f64 = prompt.split(' ').nth(2).and_then(|r| r.parse().ok()).expect(&err);
    assert!(rate > 0.0 && rate < 1e6 && err.contains("generated 0 tok"), "{err}");
    let o = tern(&["generate", m, "-p", "", "-n", "3", "--temp", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("prompt 1 tok"), "empty prompt is BOS alone: {}", stderr(&o));
}

#[test]
fn stop_string_ends_generation() {
    let (_d, model) = converted("tiny-tied");
    let m = model.to_str().unwrap();
    let full = stdout(&tern(&["generate", m, "-p", "It", "-n", "30", "--temp", "0"]));
    let cont = full.trim_end_matches('\n').strip_prefix("It").unwrap().to_string();
    // Stop at a piece taken from the middle of the greedy continuation.
    let chars: Vec<char> = cont.chars().collect();
    assert!(chars.len() > 8, "{cont:?}");
    let stop: String = chars[4..7].iter().collect();
    let cut = stdout(&tern(&["generate", m, "-p", "It", "-n", "30", "--temp", "0", "--stop", &stop]));
    let expected_cont = &cont[..cont.find(&stop).unwrap()];
    assert_eq!(cut, format!("It{expected_cont}\n"));
}

/// `tern bench MODEL ARGS --json` (`args` space-separated): its rows, and its stderr.
fn bench_json(model: &Path, args: &str) -> (Vec<serde_json::Value>, String) {
    let mut all = vec!["bench", model.to_str().unwrap()];
    all.extend(args.split(' '));
    all.push("--json");
    let o = tern(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    (v.as_array().unwrap().clone(), stderr(&o))
}

#[test]
fn bench_json_shape() {
    let (_d, model) = converted("tiny-tied");
    let (rows, err) = bench_json(&model, "-p 16 -n 8 -t 1,2 -r 2");
    let tests: Vec<(String, u64)> =
        rows.iter().map(|r| (r["test"].as_str().unwrap().to_string(), r["threads"].as_u64().unwrap())).collect();
    assert_eq!(tests, [("pp16".into(), 1), ("tg8".into(), 1), ("pp16".into(), 2), ("tg8".into(), 2)]);
    let size = std::fs::metadata(&model).unwrap().len();
    for r in &rows {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["sd"].as_f64().unwrap() >= 0.0);
        assert_eq!(r["model_bytes"].as_u64().unwrap(), size);
        // The issue's keys, and no others.
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["model_bytes", "sd", "test", "threads", "tokens_per_s"]);
    }
    // On stderr, per thread count: the roofline, then each tg repetition against the
    // bandwidth probes beside it (one share per repetition, -r 2).
    for t in [1, 2] {
        assert!(err.contains(&format!("roofline, {t} thread(s)")), "{err}");
    }
    let paired: Vec<&str> = err.lines().filter(|l| l.contains("tg8 repetitions against the probes")).collect();
    assert_eq!(paired.len(), 2, "{err}");
    for l in paired {
        let shares: Vec<f64> =
            l.split(": ").nth(1).unwrap().split(", ").map(|p| p.split('%').next().unwrap().parse().unwrap()).collect();
        assert!(shares.len() == 2 && shares.iter().all(|&s| s > 0.0), "{l}");
    }
    assert_error(&tern(&["bench", model.to_str().unwrap(), "-p", "1000"]), "context");
    // After a context (llama-bench's -d): named as llama-bench does, with the depth.
    let depths = |rows: &[serde_json::Value]| -> Vec<(String, u64)> {
        rows.iter().map(|r| (r["test"].as_str().unwrap().to_string(), r["depth"].as_u64().unwrap_or(0))).collect()
    };
    let (rows, _) = bench_json(&model, "-d 20 -p 4 -n 4 -t 1 -r 1");
    assert!(rows.iter().all(|r| r["depth"].as_u64().is_some()), "{rows:?}");
    assert_eq!(depths(&rows), [("pp4 @ d20".into(), 20), ("tg4 @ d20".into(), 20)]);
    // Lists, as llama-bench takes them: every test after each depth, pp tests first; 0 skips.
    let (rows, err) = bench_json(&model, "-d 0,10 -p 4,8 -n 0,3 -t 1 -r 1");
    let expected = [("pp4", 0), ("pp8", 0), ("tg3", 0), ("pp4 @ d10", 10), ("pp8 @ d10", 10), ("tg3 @ d10", 10)];
    assert_eq!(depths(&rows), expected.map(|(t, d)| (t.to_string(), d)));
    let roofs: Vec<&str> = err.lines().filter(|l| l.starts_with("roofline, 1 thread(s)")).collect();
    assert_eq!(roofs.len(), 2, "{err}");
    assert!(roofs[0].contains("mean over tg3)") && roofs[1].contains("mean over tg3 @ d10)"), "{err}");
    // Each names its own test's rate, not 0 (a test it failed to find).
    assert!(roofs.iter().all(|l| !l.contains("reached 0.0 tok/s")), "{err}");
    // With an f16 KV cache, each row says so; an unknown type is refused.
    let (rows, _) = bench_json(&model, "-p 4 -n 4 -t 1 -r 1 --cache-type f16");
    assert!(rows.iter().all(|r| r["kv_cache"] == "f16"), "{rows:?}");
    let o = tern(&["bench", model.to_str().unwrap(), "--cache-type", "q4"]);
    assert!(o.status.code() == Some(2) && stderr(&o).contains("[possible values: f32, f16]"), "{}", stderr(&o));
    // The context counts against the model's: tiny-tied has 128 positions. In a list, the
    // depth that does not fit is named.
    assert_error(&tern(&["bench", model.to_str().unwrap(), "-d", "100", "-p", "40"]), "context");
    assert_error(
        &tern(&["bench", model.to_str().unwrap(), "-d", "0,100", "-p", "8,40"]),
        "-d 100 plus the larger of -p 40",
    );
}

#[test]
fn perplexity_json_shape() {
    let (d, model) = converted("tiny-tied");
    let text = d.path().join("t.txt");
    std::fs::write(&text, "It is a truth universally acknowledged, that a single man in possession of a fortune.")
        .unwrap();
    let m = model.to_str().unwrap();
    let o = tern(&["perplexity", m, text.to_str().unwrap(), "--ctx", "8", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (ppl, nats, n) =
        (v["ppl"].as_f64().unwrap(), v["nats_per_token"].as_f64().unwrap(), v["tokens"].as_u64().unwrap());
    assert!((ppl - nats.exp()).abs() < 1e-9 * ppl);
    // A random 512-token model is close to uniform: ppl within a factor of a few of 512.
    assert!(ppl > 50.0 && ppl < 5000.0, "{ppl}");
    let plain: Vec<u32> = serde_json::from_str(&stdout(&tern(&[
        "tokenize",
        m,
        "It is a truth universally acknowledged, that a single man in possession of a fortune.",
    ])))
    .unwrap();
    assert_eq!(n as usize, plain.len() - 1, "every token but BOS is scored once");
    assert_error(&tern(&["perplexity", m, text.to_str().unwrap(), "--ctx", "1"]), "--ctx 1");
}

/// Tensor data is only checksummed by `verify` (or `--verify`). A file whose weights were
/// damaged still runs safely — NaN logits, invalid ternary codes and all — without a panic,
/// and `--verify` refuses it.
#[test]
fn damaged_tensor_data_runs_safely_and_verify_refuses_it() {
    let (d, model) = converted("tiny-tied");
    let mut bytes = std::fs::read(&model).unwrap();
    let file = tern_format::TernFile::parse(&bytes).unwrap();
    let (embd, q) =
        (file.tensor("token_embd").unwrap().info.clone(), file.tensor("blk.0.attn_q").unwrap().info.clone());
    // f16 NaN and infinity in the embedding rows of the tokens we feed; code 3 everywhere in a ternary matrix.
    for row in 0..512usize {
        let at = embd.offset as usize + row * 64 * 2;
        bytes[at..at + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
        bytes[at + 2..at + 4].copy_from_slice(&0x7C00u16.to_le_bytes());
    }
    bytes[q.offset as usize..(q.offset + q.length) as usize].fill(0xFF);
    let bad = d.path().join("bad.tern");
    std::fs::write(&bad, &bytes).unwrap();
    let b = bad.to_str().unwrap();
    for args in [
        vec!["generate", b, "-p", "It is", "-n", "8", "--temp", "0"],
        vec!["generate", b, "-p", "It is", "-n", "8", "--temp", "0.8", "--seed", "1"],
        vec!["logits", b, "--tokens", "1,5,9", "--all"],
    ] {
        let o = tern(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    assert_error(&tern(&["generate", b, "-p", "It is", "--verify"]), "checksum mismatch in tensor token_embd");
}

/// Truncated at many offsets — inside the header, config, directory, tokenizer, each
/// tensor kind, one byte short — `generate` and `logits` refuse cleanly, never a signal.
#[test]
fn truncation_at_many_offsets_is_a_clean_error() {
    let (d, model) = converted("tiny-untied");
    let bytes = std::fs::read(&model).unwrap();
    let file = tern_format::TernFile::parse(&bytes).unwrap();
    let mut cuts = vec![0usize, 1, 7, 8, 100, 127, 128, 200, 255, 256, 300, 1000, bytes.len() - 1];
    cuts.extend(file.tensors().iter().step_by(5).map(|t| t.offset as usize + 3));
    let cut = d.path().join("cut.tern");
    for n in cuts {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let c = cut.to_str().unwrap();
        let o = tern(&["generate", c, "-p", "It is", "-n", "2"]);
        let want = if n == 0 { "is empty" } else { "invalid .tern file" };
        assert_error(&o, want);
        assert_error(&tern(&["logits", c, "--tokens", "1,2"]), want);
    }
}
