//! Opens a `.tern` file: memory-maps it and validates its structure (never trusting a byte).
//!
//! The map stays alive for the whole run; the model borrows tensor bytes from it by
//! range, so no weight is copied. Every range handed out was checked by
//! [`tern_format::TernFile::parse`] against the file length.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tern_format::{ModelConfig, TensorInfo, TernFile, MAGIC};

/// A validated, memory-mapped `.tern` file.
pub struct ModelFile {
    path: PathBuf,
    map: Mmap,
    config: ModelConfig,
    tensors: Vec<TensorInfo>,
    tokenizer_json: String,
}

impl ModelFile {
    /// Maps and validates `path`: header, config, directory and tokenizer (with their
    /// checksums). Tensor checksums are checked by [`verify`](ModelFile::verify) only.
    pub fn open(path: &Path) -> Result<Self> {
        check_path(path)?;
        let file = open_nonblocking(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // Checked again on the open file, in case the path was replaced since.
        let meta = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?;
        if !meta.is_file() {
            bail!("{}: is not a regular file", path.display());
        }
        if meta.len() == 0 {
            bail!("{}: is empty (0 bytes), not a .tern file", path.display());
        }
        // SAFETY: the map is read-only and private. Its length is fixed now, at open; the
        // parser below checks every range against that length. The remaining hazard is
        // another process shrinking the file while it is mapped: reads past the new end
        // then raise SIGBUS. That is the documented rule (README, "Model files"): do not
        // truncate or rewrite a .tern file while tern runs from it (tern-convert replaces
        // files by rename, which is safe: the old inode stays mapped).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        // Decoding streams every weight once per token: with 2 MiB pages the TLB holds the
        // whole file's translations (4 KiB pages: one miss per page, ~65,000 per token of
        // the 700M model). Huge pages need 2 MiB folios in the page cache: the converter
        // writes whole aligned 2 MiB chunks, and this advice makes reads of a file not yet
        // cached bring it in as such. A hint: where it is refused, pages stay small.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        // A safetensors file: 8 bytes of header length, then its JSON header.
        if !map.starts_with(&MAGIC) && map.get(8) == Some(&b'{') {
            bail!(convert_first(path, "a safetensors file", path.parent()));
        }
        let parsed = TernFile::parse(&map).with_context(|| format!("{}: invalid .tern file", path.display()))?;
        let config = parsed.config().clone();
        let tensors = parsed.tensors().to_vec();
        let tokenizer_json = parsed.tokenizer_json().to_string();
        drop(parsed);
        Ok(ModelFile { path: path.to_path_buf(), map, config, tensors, tokenizer_json })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tokenizer_json(&self) -> &str {
        &self.tokenizer_json
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Checks every tensor checksum and padding byte.
    pub fn verify(&self) -> Result<()> {
        let parsed =
            TernFile::parse(&self.map).with_context(|| format!("{}: invalid .tern file", self.path.display()))?;
        parsed.verify().with_context(|| format!("{}: verification failed", self.path.display()))
    }

    /// The bytes of a validated tensor of this file.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        // In bounds: `info` came from `TernFile::parse` of this same map.
        &self.map[info.offset as usize..(info.offset + info.length) as usize]
    }
}

/// Refuses a MODEL path that is not a regular `.tern` file before opening it: a FIFO
/// would block the open; a folder or a safetensors file is a checkpoint not yet converted.
fn check_path(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let t = meta.file_type();
    if t.is_dir() {
        bail!(convert_first(path, "a folder", Some(path)));
    }
    if !t.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        bail!("{}: is {what}, expected a .tern file (a regular file)", path.display());
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        bail!(convert_first(path, "a safetensors file", path.parent()));
    }
    Ok(())
}

/// The message for a checkpoint given where a `.tern` file was expected.
fn convert_first(path: &Path, what: &str, folder: Option<&Path>) -> String {
    let folder = folder.filter(|f| !f.as_os_str().is_empty()).unwrap_or(Path::new("."));
    format!(
        "{}: is {what}, not a .tern file; convert the checkpoint folder first: tern-convert {} -o MODEL.tern",
        path.display(),
        folder.display()
    )
}

/// Opens for reading without blocking: a FIFO put at the path after [`check_path`] then
/// fails the checks on the open file instead of hanging in `open`.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}
