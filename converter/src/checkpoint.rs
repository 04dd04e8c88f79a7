//! A Hugging Face safetensors checkpoint, single-file or sharded, memory-mapped.
//!
//! Tensors are looked up by their Hugging Face name and read one at a time, as f32 or as
//! raw U8 (pre-packed ternary weights); after each tensor its pages are dropped from the
//! process, so peak memory stays near one tensor rather than the model.

use anyhow::{bail, Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor lives: shard index, byte range in the shard, dtype, shape.
#[derive(Debug, Clone)]
pub struct TensorLoc {
    shard: usize,
    start: usize,
    len: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorLoc>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if index.exists() {
            shard_files(&index)?
        } else if single.exists() {
            vec![single]
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json (a .bin PyTorch checkpoint must be re-saved as safetensors first)",
                dir.display()
            );
        };
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = File::open(&path).with_context(|| format!("opening shard {}", path.display()))?;
            // SAFETY: the map is read-only and private to this process. If another process
            // truncates the file while we read it, reads past the new end raise SIGBUS; that
            // is the documented hazard of mapping a file, as for every mmap-based loader.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let loc = TensorLoc {
                    shard: i,
                    start: data_start + a,
                    len: b - a,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                };
                if tensors.insert(name.clone(), loc).is_some() {
                    bail!("{}: tensor {name} appears in more than one shard", path.display());
                }
            }
            shards.push(Shard { path, map });
        }
        Ok(Checkpoint { shards, tensors })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&TensorLoc> {
        self.tensors.get(name)
    }

    /// Bytes of tensor data in all shards.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.len as u64).sum()
    }

    pub fn shard_path(&self, loc: &TensorLoc) -> &Path {
        &self.shards[loc.shard].path
    }

    /// Reads a tensor as f32 values, checking that each is finite.
    pub fn read_f32(&self, name: &str, loc: &TensorLoc) -> Result<Vec<f32>> {
        let shard = &self.shards[loc.shard];
        // In bounds: safetensors' metadata check ties every range to the file length.
        let bytes = &shard.map[loc.start..loc.start + loc.len];
        let values: Vec<f32> = match loc.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; tern-convert reads F32, F16 and BF16 here",
                shard.path.display()
            ),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor {name} has a non-finite value ({}) at flat index {i}", shard.path.display(), values[i]);
        }
        self.release(loc);
        Ok(values)
    }

    /// Reads a U8 tensor's bytes (a pre-packed ternary weight).
    pub fn read_u8(&self, name: &str, loc: &TensorLoc) -> Result<Vec<u8>> {
        let shard = &self.shards[loc.shard];
        if loc.dtype != Dtype::U8 {
            bail!("{}: tensor {name} has dtype {:?}, expected U8 (packed ternary)", shard.path.display(), loc.dtype);
        }
        // In bounds: safetensors' metadata check ties every range to the file length.
        let bytes = shard.map[loc.start..loc.start + loc.len].to_vec();
        self.release(loc);
        Ok(bytes)
    }

    /// Drops the tensor's pages from this process (they stay in the page cache).
    fn release(&self, loc: &TensorLoc) {
        let map = &self.shards[loc.shard].map;
        // SAFETY: MADV_DONTNEED on a read-only private file mapping only discards this
        // process's copies of the pages; the next access re-reads the same bytes from the
        // file. No reference into the range is held past this point that could observe a
        // difference, since the file's contents are unchanged.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, loc.start, loc.len) };
    }
}

/// The distinct shard files named by a `model.safetensors.index.json`, each checked to exist.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file =
            file.as_str().with_context(|| format!("{}: weight_map[{tensor}] is not a file name", index.display()))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            bail!("{}: weight_map[{tensor}] = {file:?} is not a plain file name", index.display());
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.exists() {
                bail!("{}: shard {file} (named for tensor {tensor}) is missing", index.display());
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
