//! `tern-convert` as a user runs it, with hostile paths, timing, signals and values
//! (issue 26, items 1-8): nothing lost, nothing overwritten.
//!
//! Every file a test leaves at an output path is checked with `verify` below: the
//! structure, every checksum and padding byte, as `tern verify` checks them (that binary
//! belongs to the runtime package, which this package's tests cannot build).

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tern_convert::{convert, temp_files, Options};
use tern_format::{Encoding, TernFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

/// A writable copy of a fixture folder, at `tmp/ckpt`.
fn copy_fixture(name: &str, tmp: &Path) -> PathBuf {
    let dest = tmp.join("ckpt");
    let ok = Command::new("cp").arg("-r").arg(fixture(name)).arg(&dest).status().unwrap();
    assert!(ok.success());
    dest
}

fn tern_convert(args: &[&Path]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-convert"));
    cmd.args(args).env_remove("TERN_CONVERT_PAUSE_MS");
    cmd
}

fn run(input: &Path, output: &Path) -> Output {
    tern_convert(&[input, Path::new("-o"), output]).output().unwrap()
}

/// A converted fixture made by the library, as a reference.
fn reference(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}-reference.tern"));
    let opts = Options { embed: Encoding::F16, progress: false, pause_per_tensor: None };
    convert(&fixture(name), &out, &opts).unwrap();
    out
}

/// The checks of `tern verify`: structure, every checksum, every padding byte.
fn verify(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let file = TernFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.verify().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Exit code 1, and one `tern-convert: error:` line containing `needle` (no panic).
fn assert_refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("tern-convert: error: ") && err.contains(needle), "{err:?} lacks {needle:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn no_temp_files(output: &Path) {
    assert_eq!(temp_files(output), Vec::<PathBuf>::new(), "temp files left beside {}", output.display());
}

/// Item 1: an output that exists and is not a regular file is refused, and left as it was.
#[test]
fn output_that_is_not_a_regular_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.tern");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let socket = d.path().join("socket.tern");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // /dev/full itself is not used: were the check broken, a test run as root would replace it.
    let device = d.path().join("full.tern");
    std::os::unix::fs::symlink("/dev/full", &device).unwrap();
    let folder = d.path().join("folder.tern");
    std::fs::create_dir(&folder).unwrap();
    let input = fixture("tiny-tied");
    for (path, what) in [
        (&fifo, "exists and is a FIFO, not a regular file"),
        (&socket, "exists and is a socket, not a regular file"),
        (&device, "exists and is a character device, not a regular file"),
        (&folder, "is a folder (expected the path of the .tern file to write)"),
    ] {
        assert_refused(&run(&input, path), &format!("{}: {what}", path.display()));
        no_temp_files(path);
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    assert_eq!(std::fs::read_link(&device).unwrap(), Path::new("/dev/full"));
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
}

/// Item 1, the other side: a symlink to a regular file is replaced by the new file; the
/// file it pointed to keeps its bytes.
#[test]
fn symlink_at_the_output_is_replaced_and_its_target_kept() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("target.tern");
    std::fs::write(&target, b"someone's file").unwrap();
    let link = d.path().join("link.tern");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = run(&fixture("tiny-tied"), &link);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"someone's file");
    verify(&link);
    no_temp_files(&link);
}

/// Item 2: an output that is one of the inputs (by name, through a symlink or as a hard
/// link elsewhere) is refused and the checkpoint keeps every byte; an older `.tern` inside
/// the checkpoint folder may be replaced.
#[test]
fn output_that_is_an_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("tiny-f16-sharded", d.path());
    let shard = "model-00002-of-00002.safetensors";
    let hard_link = d.path().join("hard.tern");
    std::fs::hard_link(ckpt.join(shard), &hard_link).unwrap();
    let sym_link = d.path().join("sym.tern");
    std::os::unix::fs::symlink(ckpt.join("config.json"), &sym_link).unwrap();
    let cases = [
        (ckpt.join("config.json"), "config.json"),
        (ckpt.join("tokenizer.json"), "tokenizer.json"),
        (ckpt.join("model.safetensors.index.json"), "model.safetensors.index.json"),
        (ckpt.join(shard), shard),
        (hard_link.clone(), shard),
        (sym_link.clone(), "config.json"),
    ];
    for (out, name) in &cases {
        let o = run(&ckpt, out);
        let msg = format!(
            "{}: is the same file as the checkpoint's {name}; writing there would destroy the input",
            out.display()
        );
        assert_refused(&o, &msg);
        no_temp_files(out);
    }
    for entry in std::fs::read_dir(fixture("tiny-f16-sharded")).unwrap() {
        let p = entry.unwrap().path();
        let copy = ckpt.join(p.file_name().unwrap());
        assert!(std::fs::read(&p).unwrap() == std::fs::read(&copy).unwrap(), "{} changed", copy.display());
    }
    let inside = ckpt.join("model.tern");
    for _ in 0..2 {
        let o = run(&ckpt, &inside);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        verify(&inside);
    }
    no_temp_files(&inside);
}

/// Item 3: four conversions to one output at once, repeated. Two different inputs, so that
/// a file mixing two writers' bytes would match neither reference.
#[test]
fn concurrent_conversions_to_one_output() {
    let d = tempfile::tempdir().unwrap();
    let names = ["tiny-tied", "tiny-untied"];
    let refs: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(reference(n, d.path())).unwrap()).collect();
    let out = d.path().join("shared.tern");
    for round in 0..4 {
        let children: Vec<Child> = (0..4)
            .map(|i| {
                let input = fixture(names[i % 2]);
                let mut cmd = tern_convert(&[&input, Path::new("-o"), &out]);
                // A short pause per tensor makes the four writers overlap.
                cmd.env("TERN_CONVERT_PAUSE_MS", "3").stdout(Stdio::null()).stderr(Stdio::piped());
                cmd.spawn().unwrap()
            })
            .collect();
        for child in children {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let got = std::fs::read(&out).unwrap();
        assert!(refs.contains(&got), "round {round}: the output is neither input's conversion");
        verify(&out);
        no_temp_files(&out);
    }
}

/// Starts a slow conversion (100 ms per tensor: about 3.6 s for tiny-untied's 36 tensors)
/// and waits until it is writing its temp file.
fn slow_conversion(output: &Path) -> Child {
    let input = fixture("tiny-untied");
    let mut cmd = tern_convert(&[&input, Path::new("-o"), output]);
    cmd.env("TERN_CONVERT_PAUSE_MS", "100").stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while temp_files(output).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the conversion never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A few tensors in, far from the end.
    std::thread::sleep(Duration::from_millis(250));
    child
}

/// Item 4: SIGINT, SIGTERM and SIGHUP mid-conversion remove the temp file, print one line
/// and exit with 128 + the signal's number; the output path is untouched (absent, or the
/// older file, byte for byte).
#[test]
fn signals_remove_the_temp_file_and_keep_the_output() {
    let d = tempfile::tempdir().unwrap();
    let older = std::fs::read(reference("tiny-tied", d.path())).unwrap();
    for (signal, code, existed) in [("INT", 130, false), ("TERM", 143, true), ("HUP", 129, true), ("INT", 130, true)] {
        let out = d.path().join(format!("{signal}-{existed}.tern"));
        if existed {
            std::fs::write(&out, &older).unwrap();
        }
        let child = slow_conversion(&out);
        let killed = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "SIG{signal}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let line = format!("tern-convert: stopped by SIG{signal}; removed the unfinished ");
        assert!(err.starts_with(&line) && err.contains(&format!("{} is untouched", out.display())), "{err}");
        assert!(o.stdout.is_empty());
        no_temp_files(&out);
        if existed {
            assert!(std::fs::read(&out).unwrap() == older, "SIG{signal} changed the older output");
            verify(&out);
        } else {
            assert!(!out.exists(), "SIG{signal} left a file at the output path");
        }
    }
}

/// Item 5: a file-size limit reached mid-write (RLIMIT_FSIZE, set by the shell in the
/// child): a clear error naming the output, no temp file, the output path untouched.
#[test]
fn file_size_limit_mid_write() {
    let d = tempfile::tempdir().unwrap();
    let older = std::fs::read(reference("tiny-tied", d.path())).unwrap();
    for existed in [false, true] {
        let out = d.path().join(format!("limited-{existed}.tern"));
        if existed {
            std::fs::write(&out, &older).unwrap();
        }
        // 64 blocks (32 or 64 KiB, by the shell's unit): far below the ~300 KB output.
        let o = Command::new("sh")
            .args(["-c", "ulimit -f 64 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_tern-convert")])
            .arg(fixture("tiny-untied"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert_refused(&o, &format!("writing {} (to its temp file ", out.display()));
        assert_refused(&o, "File too large");
        no_temp_files(&out);
        if existed {
            assert!(std::fs::read(&out).unwrap() == older);
            verify(&out);
        } else {
            assert!(!out.exists());
        }
    }
}

/// Item 5, a full disk: a 256 KiB tmpfs, mounted in a private mount namespace (so nothing
/// outside the test sees it), that holds an older output (160 KB) but not the new one
/// (280 KB). Where user namespaces are not available this test says so and passes; the
/// file-size limit above holds item 5 everywhere.
#[test]
fn disk_full_mid_write() {
    let namespace = ["--user", "--map-root-user", "--mount"];
    if !Command::new("unshare").args(namespace).arg("true").status().is_ok_and(|s| s.success()) {
        eprintln!("disk_full_mid_write: no user namespaces here (unshare failed); not run");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let older = reference("tiny-tied", d.path());
    let mount = d.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    // In the namespace: mount, put the older output there, convert, then report the exit
    // code, whether the output still equals the older file, and what the folder holds.
    let script = r#"mount -t tmpfs -o size=256k tmpfs "$2" && cp "$3" "$2/m.tern" || exit 99
        "$0" "$1" -o "$2/m.tern"; echo "exit $?"
        cmp -s "$3" "$2/m.tern" && echo "output unchanged"; ls -A "$2""#;
    let o = Command::new("unshare")
        .args(namespace)
        .args(["sh", "-c", script, env!("CARGO_BIN_EXE_tern-convert")])
        .arg(fixture("tiny-untied"))
        .arg(&mount)
        .arg(&older)
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["exit 1", "output unchanged", "m.tern"], "{err}");
    let target = mount.join("m.tern");
    assert!(err.starts_with(&format!("tern-convert: error: writing {} (to its temp file ", target.display())), "{err}");
    assert!(err.trim_end().ends_with("No space left on device (os error 28)"), "{err}");
    verify(&older);
}

/// Item 6: `-o -` is refused (a .tern is written by rename); no file named `-` appears.
#[test]
fn dash_as_output_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let o =
        tern_convert(&[&fixture("tiny-tied"), Path::new("-o"), Path::new("-")]).current_dir(d.path()).output().unwrap();
    assert_refused(&o, "-o -: tern-convert cannot write to stdout");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

/// Writes `value` over the f32 at `index` of `tensor` in `dir/model.safetensors`.
fn poison(dir: &Path, tensor: &str, index: usize, value: f32) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let (header, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.info(tensor).unwrap();
    assert_eq!(info.dtype, safetensors::Dtype::F32);
    let at = 8 + header + info.data_offsets.0 + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Item 7: a NaN or infinity in a tensor kept in floating point (a norm, the embedding,
/// the untied output matrix) is an error naming the tensor; nothing is written.
#[test]
fn non_finite_values_are_refused() {
    let cases = [
        ("tiny-tied", "model.norm.weight", f32::NAN, "NaN"),
        ("tiny-tied", "model.layers.1.post_attention_layernorm.weight", f32::INFINITY, "inf"),
        ("tiny-tied", "model.embed_tokens.weight", f32::INFINITY, "inf"),
        ("tiny-untied", "lm_head.weight", f32::NEG_INFINITY, "-inf"),
    ];
    for (name, tensor, value, shown) in cases {
        let d = tempfile::tempdir().unwrap();
        let ckpt = copy_fixture(name, d.path());
        poison(&ckpt, tensor, 3, value);
        let out = d.path().join("m.tern");
        let o = run(&ckpt, &out);
        assert_refused(&o, &format!("tensor {tensor}"));
        assert_refused(&o, shown);
        assert_refused(&o, "at flat index 3");
        assert!(!out.exists());
        no_temp_files(&out);
    }
}

/// Item 8: an input that is not a folder gets an error saying what it is and what is expected.
#[test]
fn input_that_is_not_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("tiny-tied", d.path());
    let converted = reference("tiny-tied", d.path());
    let renamed = d.path().join("model.bin");
    std::fs::copy(&converted, &renamed).unwrap();
    let missing = d.path().join("missing");
    let expected = "not a folder; tern-convert reads a Hugging Face checkpoint folder (config.json, \
                    tokenizer.json, model.safetensors) or a bitnet.cpp I2_S .gguf file";
    let parent = format!("; give the folder that holds it, {}", ckpt.display());
    let tern = "is a .tern file (already converted: run it with `tern generate`), ";
    let cases = [
        (converted.clone(), format!("{tern}{expected}")),
        (renamed, format!("{tern}{expected}")),
        (ckpt.join("model.safetensors"), format!("is a safetensors file, {expected}{parent}")),
        (ckpt.join("config.json"), format!("is a file, {expected}{parent}")),
        (missing, "no such folder (expected a Hugging Face checkpoint folder".to_string()),
    ];
    for (input, msg) in cases {
        let out = d.path().join("out.tern");
        assert_refused(&run(&input, &out), &format!("{}: {msg}", input.display()));
        assert!(!out.exists());
        no_temp_files(&out);
    }
}
