//! The two paths a conversion is given, checked before anything is read or written: the
//! input must be a checkpoint folder (a GGUF file is taken before this check, in lib.rs),
//! and the output a path whose replacement destroys nothing but an older file at that path.

use anyhow::{bail, Context, Result};
use std::fs::{FileType, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use tern_format::MAGIC;

const EXPECTED_INPUT: &str =
    "a Hugging Face checkpoint folder (config.json, tokenizer.json, model.safetensors) or a bitnet.cpp I2_S .gguf file";

/// What a path that is not a regular file is, for messages ("a FIFO").
pub(crate) fn kind(t: FileType) -> &'static str {
    let kinds = [
        (t.is_dir(), "a folder"),
        (t.is_fifo(), "a FIFO"),
        (t.is_socket(), "a socket"),
        (t.is_char_device(), "a character device"),
        (t.is_block_device(), "a block device"),
    ];
    kinds.into_iter().find(|k| k.0).map_or("not a regular file", |k| k.1)
}

/// `input` must be a folder; anything else gets an error saying what it is and what was expected.
pub(crate) fn check_input(input: &Path) -> Result<()> {
    let meta = match std::fs::metadata(input) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: no such folder (expected {EXPECTED_INPUT})", input.display())
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", input.display())),
    };
    if meta.is_dir() {
        return Ok(());
    }
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
    let what = if ext == "tern" || (meta.is_file() && starts_with_magic(input)) {
        "a .tern file (already converted: run it with `tern generate`)"
    } else if ext == "safetensors" {
        "a safetensors file"
    } else if meta.is_file() {
        "a file"
    } else {
        kind(meta.file_type())
    };
    let parent = input.parent().filter(|p| p.join("config.json").is_file());
    let hint = parent.map_or(String::new(), |p| format!("; give the folder that holds it, {}", p.display()));
    bail!("{}: is {what}, not a folder; tern-convert reads {EXPECTED_INPUT}{hint}", input.display())
}

fn starts_with_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == MAGIC
}

/// `output` must be a path to write a file at: not `-`, not a folder, device, FIFO or
/// socket (a symlink is followed to decide), and not the same file as one in `input`.
pub(crate) fn check_output(input: &Path, output: &Path) -> Result<()> {
    if output.as_os_str() == "-" {
        bail!(
            "-o -: tern-convert cannot write to stdout: the .tern file is written to a temp file beside the \
             output and renamed into place; give a file path"
        );
    }
    if output.file_name().is_none() {
        bail!("{}: is not a file path (expected the path of the .tern file to write)", output.display());
    }
    // A path that does not exist yet (or cannot be read: creating the temp file says why) is fine.
    let Ok(meta) = std::fs::metadata(output) else { return Ok(()) };
    if meta.is_dir() {
        bail!("{}: is a folder (expected the path of the .tern file to write)", output.display());
    }
    if !meta.is_file() {
        bail!(
            "{}: exists and is {}, not a regular file; tern-convert only replaces regular files (the finished \
             .tern is renamed over the path): give another path",
            output.display(),
            kind(meta.file_type())
        );
    }
    if let Some(name) = same_file_in(input, &meta) {
        bail!(
            "{}: is the same file as the checkpoint's {name}; writing there would destroy the input: give another path",
            output.display()
        );
    }
    Ok(())
}

/// The name of the file in `folder` (links followed) that is the file `meta` describes,
/// `.tern` files apart (an older conversion there may be replaced).
fn same_file_in(folder: &Path, meta: &Metadata) -> Option<String> {
    let entries = std::fs::read_dir(folder).ok()?;
    entries.filter_map(|e| e.ok()).find_map(|e| {
        let path = e.path();
        let m = std::fs::metadata(&path).ok()?;
        let is_tern = path.extension().is_some_and(|x| x == "tern");
        let same = m.dev() == meta.dev() && m.ino() == meta.ino();
        (same && !is_tern).then(|| e.file_name().to_string_lossy().into_owned())
    })
}
