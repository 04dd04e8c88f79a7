//! The `tern` binary (and `scripts/demo.sh`) with odd paths, impossible requests and
//! Ctrl-C (issue 26, items 9-13): every check before any output, messages that name the
//! command's own flags.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().unwrap()
}

/// A converted fixture in a temp dir, checked with `tern verify`.
fn converted(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{name}.tern"));
    let opts = tern_convert::Options { embed: tern_format::Encoding::F16, progress: false, pause_per_tensor: None };
    tern_convert::convert(&fixture(name), &out, &opts).unwrap();
    let out = out.to_str().unwrap().to_string();
    assert_verified(&out);
    (dir, out)
}

fn assert_verified(path: &str) {
    let o = tern(&["verify", path]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Exit code 1, nothing on stdout, and one `tern: error:` line containing `needle`.
fn assert_refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("tern: error: ") && err.contains(needle), "{err:?} lacks {needle:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
}

/// Waits for `child` at most `limit`; kills it and fails if it is still running.
fn wait_at_most(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Item 9: a FIFO as MODEL is refused without hanging in open; a checkpoint folder or a
/// safetensors file gets "convert it first".
#[test]
fn model_that_is_not_a_tern_file() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("model.tern");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();
    for command in [&["generate", fifo, "-p", "x"][..], &["verify", fifo]] {
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_at_most(child, Duration::from_secs(20));
        assert_refused(&o, &format!("{fifo}: is a FIFO, expected a .tern file (a regular file)"));
    }

    let folder = fixture("tiny-tied");
    let folder = folder.to_str().unwrap();
    let convert = format!("convert the checkpoint folder first: tern-convert {folder} -o MODEL.tern");
    let o = tern(&["generate", folder, "-p", "x"]);
    assert_refused(&o, &format!("{folder}: is a folder, not a .tern file; {convert}"));
    let weights = format!("{folder}/model.safetensors");
    let o = tern(&["inspect", &weights]);
    assert_refused(&o, &format!("{weights}: is a safetensors file, not a .tern file; {convert}"));
    // Found by its bytes too, whatever its name.
    let renamed = d.path().join("weights.bin");
    std::fs::copy(&weights, &renamed).unwrap();
    let o = tern(&["verify", renamed.to_str().unwrap()]);
    assert_refused(&o, "weights.bin: is a safetensors file, not a .tern file; convert the checkpoint folder first");
}

/// Item 10: a prompt plus -n beyond the context fails before the prompt is printed.
#[test]
fn generate_checks_everything_before_printing() {
    let (_d, model) = converted("tiny-tied");
    let o = tern(&["generate", &model, "-p", "It is a truth", "-n", "120"]);
    assert_refused(&o, "the prompt (9 tokens) plus -n 120 needs 129 positions, but the model's context is 128");
    let o = tern(&["generate", &model, "-p", "It is a truth", "-n", "119", "--temp", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.starts_with(b"It is a truth"));
}

/// Item 11: `logits` messages name `--tokens`, never `-n` (a flag it does not have);
/// `bench` and `perplexity` name their own flag or file too.
#[test]
fn messages_name_each_commands_own_flags() {
    let (_d, model) = converted("tiny-tied");
    let long = vec!["5"; 129].join(",");
    let o = tern(&["logits", &model, "--tokens", &long]);
    assert_refused(&o, "--tokens has 129 ids, but the model's context is 128 positions");
    let o = tern(&["logits", &model, "--tokens", "1,512"]);
    assert_refused(&o, "--tokens: token id 512 is not below the model's vocabulary size 512");
    for o in [tern(&["logits", &model, "--tokens", &long]), tern(&["logits", &model, "--tokens", "1,512"])] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("-n ") && !err.contains("-n,"), "{err}");
    }
    let fits = vec!["5"; 128].join(",");
    let o = tern(&["logits", &model, "--tokens", &fits]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_refused(&tern(&["bench", &model, "-t", "1,0"]), "-t: thread counts must be ≥ 1");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().to_str().unwrap();
    let o = tern(&["perplexity", &model, empty]);
    assert_refused(&o, &format!("{empty}: has no text to score (0 tokens)"));
}

/// Item 12: Ctrl-C (SIGINT) during generate stops it, ends the line, prints the stats line
/// and exits with 130.
#[test]
fn ctrl_c_during_generate() {
    let (_d, model) = converted("tiny-tied");
    let prompt = "It is a truth";
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["generate", &model, "-p", prompt, "-n", "100", "--temp", "1", "--seed", "7"])
        // 40 ms per token: about 4 s for all 100, so the signal lands half-way.
        .env("TERN_GENERATE_PAUSE_MS", "40")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The prompt is printed once every check passed and Ctrl-C is handled; then a few tokens.
    let mut seen = vec![0u8; prompt.len()];
    stdout.read_exact(&mut seen).unwrap();
    assert_eq!(seen, prompt.as_bytes());
    std::thread::sleep(Duration::from_millis(400));
    assert!(Command::new("kill").args(["-s", "INT", &child.id().to_string()]).status().unwrap().success());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let o = wait_at_most(child, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(rest.ends_with(b"\n"), "the line is not ended: {:?}", String::from_utf8_lossy(&rest));
    let stats = err.lines().last().unwrap_or_default();
    assert!(stats.starts_with("load ") && stats.contains("| prompt 9 tok,"), "{err}");
    let generated: usize = stats.split("| generated ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((1..100).contains(&generated), "{generated} tokens: the signal did not stop generation");
    assert!(!err.contains("error"), "{err}");
}

/// Item 13: `scripts/demo.sh` with a relative DIR, run from another folder.
#[test]
fn demo_with_a_relative_dir_from_another_folder() {
    // The demo runs both binaries; this package's tests build only `tern`, so build the
    // converter's beside it (cargo does not hold its lock while tests run).
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tern")).parent().unwrap();
    let build = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "tern-convert", "--bin", "tern-convert"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(build.success() && bin_dir.join("tern-convert").exists());

    let cwd = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-r").arg(fixture("tiny-tied")).arg(cwd.path().join("ckpt")).status();
    assert!(status.unwrap().success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let o = Command::new("bash")
        .arg(&script)
        .args(["ckpt", "It is a truth"])
        .current_dir(cwd.path())
        .env("TERN_BIN_DIR", bin_dir)
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("wrote target/demo.tern: 24 tensors"), "{out}");
    assert!(out.contains("\nOK: target/demo.tern (24 tensors") && out.contains("\nIt is a truth"), "{out}");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/demo.tern");
    assert_verified(demo.to_str().unwrap());
}
