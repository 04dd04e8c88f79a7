//! Reader and writer of the `.tern` packed ternary model format.
//!
//! `SPEC.md` beside this crate is the normative description; this crate is the one
//! place in tern that knows the bytes. [`TernFile::parse`] validates every offset,
//! length and shape against the file and against each other before it hands out a
//! slice, so no input can make it panic, read out of bounds, or allocate more than
//! the file's own size. [`TernFile::verify`] additionally checks every checksum and
//! every padding byte.
#![forbid(unsafe_code)]

pub mod block_quant;
mod config;
mod layout;
pub mod metadata;
pub mod names;
pub mod ternary;
mod writer;

pub use config::{
    flags, Activation, Arch, GenerationDefaults, LinearExtras, ModelConfig, ScaleConvention, WeightsSource,
    MAX_EXTRA_EOS, NO_TOKEN,
};
pub use layout::{
    align_up, checksum, RawConfig, RawEntry, RawHeader, CONFIG_LEN, ENTRY_LEN, HEADER_LEN, MAGIC, NAME_LEN,
    TENSOR_ALIGN, VERSION,
};
pub use metadata::ChatMetadata;
pub use writer::{TensorSpec, TernWriter};

use layout::HEADER_CHECKSUMMED;
use std::collections::HashSet;
use zerocopy::FromBytes;

/// Everything that can be wrong with a `.tern` file, each naming the place.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a .tern file (bad magic bytes {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("made by a newer tern (format version {found}; this build reads up to {supported}); upgrade tern")]
    NewerVersion { found: u32, supported: u32 },
    #[error("file is {actual} bytes but {what} needs {needed}: truncated or damaged")]
    Truncated { what: String, needed: u64, actual: u64 },
    #[error("header field {field}: {reason}")]
    Header { field: &'static str, reason: String },
    #[error("config field {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("tensor directory entry {index} ({name}): {reason}")]
    Entry { index: usize, name: String, reason: String },
    #[error("checksum mismatch in {region}: stored {stored:016x}, computed {computed:016x}")]
    Checksum { region: String, stored: u64, computed: u64 },
    #[error("non-zero padding byte at offset {offset} ({region})")]
    Padding { region: String, offset: u64 },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How a tensor's bytes encode its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// IEEE float32, little-endian, row-major.
    F32 = 0,
    /// IEEE float16, little-endian, row-major.
    F16 = 1,
    /// Ternary, 2 bits per weight, 256-weight blocks (see [`ternary`]).
    T2 = 2,
    /// Int8 with one f32 scale per row: `rows` f32 scales, then `rows × cols` int8 values.
    Q8 = 3,
    /// 6-bit integers in blocks of 32 along a row, an f16 scale per block (see [`block_quant`]).
    Q6 = 4,
    /// 4-bit integers in blocks of 32 along a row, an f16 scale per block (see [`block_quant`]).
    Q4 = 5,
}

impl Encoding {
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Encoding::F32),
            1 => Some(Encoding::F16),
            2 => Some(Encoding::T2),
            3 => Some(Encoding::Q8),
            4 => Some(Encoding::Q6),
            5 => Some(Encoding::Q4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::T2 => "t2",
            Encoding::Q8 => "q8",
            Encoding::Q6 => "q6",
            Encoding::Q4 => "q4",
        }
    }

    /// The first format version that has this encoding.
    pub fn since_version(self) -> u32 {
        match self {
            Encoding::Q6 | Encoding::Q4 => 3,
            _ => 1,
        }
    }
}

/// A tensor's shape: a vector or a `[rows, cols]` matrix (rows are outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Vector(u64),
    Matrix { rows: u64, cols: u64 },
}

impl Shape {
    pub fn ndim(self) -> u32 {
        match self {
            Shape::Vector(_) => 1,
            Shape::Matrix { .. } => 2,
        }
    }

    pub fn dims(self) -> [u64; 2] {
        match self {
            Shape::Vector(n) => [n, 0],
            Shape::Matrix { rows, cols } => [rows, cols],
        }
    }

    pub fn elements(self) -> Option<u64> {
        match self {
            Shape::Vector(n) => Some(n),
            Shape::Matrix { rows, cols } => rows.checked_mul(cols),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Vector(n) => write!(f, "[{n}]"),
            Shape::Matrix { rows, cols } => write!(f, "[{rows}, {cols}]"),
        }
    }
}

/// Bytes a tensor of this encoding and shape occupies, or `None` when it overflows
/// or the combination is not allowed (ternary tensors are matrices).
pub fn tensor_bytes(encoding: Encoding, shape: Shape) -> Option<u64> {
    match encoding {
        Encoding::F32 => shape.elements()?.checked_mul(4),
        Encoding::F16 => shape.elements()?.checked_mul(2),
        Encoding::Q8 => match shape {
            Shape::Vector(_) => None,
            Shape::Matrix { rows, cols } => rows.checked_mul(cols)?.checked_add(rows.checked_mul(4)?),
        },
        Encoding::Q6 | Encoding::Q4 => match shape {
            Shape::Vector(_) => None,
            Shape::Matrix { rows, cols } => {
                let blocks = cols.checked_add(block_quant::BLOCK as u64 - 1)? / block_quant::BLOCK as u64;
                rows.checked_mul(blocks)?.checked_mul(block_quant::block_bytes(encoding) as u64)
            }
        },
        Encoding::T2 => match shape {
            Shape::Vector(_) => None,
            Shape::Matrix { rows, cols } => {
                let blocks = cols.checked_add(ternary::BLOCK as u64 - 1)? / ternary::BLOCK as u64;
                rows.checked_mul(blocks)?.checked_mul(ternary::BLOCK_BYTES as u64)
            }
        },
    }
}

/// A validated directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub encoding: Encoding,
    pub shape: Shape,
    pub offset: u64,
    pub length: u64,
    /// For `t2`: the tensor scale as stored; the config's [`ScaleConvention`] says how it
    /// enters the rescale ([`ScaleConvention::multiplier`]). 1.0 otherwise.
    pub scale: f32,
    pub checksum: u64,
}

/// A tensor's validated bytes inside the file.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

/// A parsed, structurally validated `.tern` file borrowing its bytes (usually a memory map).
#[derive(Debug)]
pub struct TernFile<'a> {
    bytes: &'a [u8],
    header: RawHeader,
    config: ModelConfig,
    tensors: Vec<TensorInfo>,
    tokenizer: &'a str,
}

fn header_err(field: &'static str, reason: impl Into<String>) -> FormatError {
    FormatError::Header { field, reason: reason.into() }
}

fn check(region: &str, stored: u64, bytes: &[u8]) -> Result<(), FormatError> {
    let computed = checksum(bytes);
    if computed != stored {
        return Err(FormatError::Checksum { region: region.to_string(), stored, computed });
    }
    Ok(())
}

/// Reads only the header's magic and version: enough to tell whether a file is a
/// `.tern` this build can read, without trusting anything else.
pub fn read_version(bytes: &[u8]) -> Result<u32, FormatError> {
    let Some(magic) = bytes.get(..8) else {
        return Err(FormatError::Truncated {
            what: "the header".into(),
            needed: HEADER_LEN as u64,
            actual: bytes.len() as u64,
        });
    };
    if magic != MAGIC {
        return Err(FormatError::BadMagic(magic.try_into().expect("8 bytes")));
    }
    let Some(v) = bytes.get(8..12) else {
        return Err(FormatError::Truncated {
            what: "the header".into(),
            needed: HEADER_LEN as u64,
            actual: bytes.len() as u64,
        });
    };
    Ok(u32::from_le_bytes(v.try_into().expect("4 bytes")))
}

impl<'a> TernFile<'a> {
    /// Validates the structure of a whole file and the checksums of its metadata
    /// (header, config, directory, tokenizer). Tensor data is not hashed: see [`verify`].
    ///
    /// [`verify`]: TernFile::verify
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let file_len = bytes.len() as u64;
        let version = read_version(bytes)?;
        if version > VERSION {
            return Err(FormatError::NewerVersion { found: version, supported: VERSION });
        }
        if version == 0 {
            return Err(header_err("version", "0 is not a valid version"));
        }
        let (header, _) = RawHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
            what: "the header".into(),
            needed: HEADER_LEN as u64,
            actual: file_len,
        })?;
        check("header", header.header_checksum.get(), &bytes[..HEADER_CHECKSUMMED])?;
        if header.header_len.get() as usize != HEADER_LEN {
            return Err(header_err("header_len", format!("{} (expected {HEADER_LEN})", header.header_len)));
        }
        if version == 1 && (header.meta_len.get() != 0 || header.meta_checksum.get() != 0) {
            // Version 1 had 16 reserved bytes where version 2 places the metadata region.
            return Err(header_err("reserved", "reserved bytes are not zero"));
        }
        if header.file_len.get() != file_len {
            let what = "the length recorded in its header".to_string();
            return Err(if header.file_len.get() > file_len {
                FormatError::Truncated { what, needed: header.file_len.get(), actual: file_len }
            } else {
                header_err(
                    "file_len",
                    format!("header says {} bytes but the file has {file_len}: extra bytes appended", header.file_len),
                )
            });
        }

        // The metadata regions follow each other without gaps, in a fixed order.
        let expect = |field: &'static str, got: u64, want: u64| {
            if got == want {
                Ok(())
            } else {
                Err(header_err(field, format!("{got} (expected {want})")))
            }
        };
        expect("config_offset", header.config_offset.get(), HEADER_LEN as u64)?;
        expect("config_len", header.config_len.get(), CONFIG_LEN as u64)?;
        expect("dir_offset", header.dir_offset.get(), (HEADER_LEN + CONFIG_LEN) as u64)?;
        let n_tensors = header.n_tensors.get();
        // Bounded by the file's size before anything is allocated from it.
        let dir_len = n_tensors.checked_mul(ENTRY_LEN as u64).filter(|&l| l <= file_len).ok_or_else(|| {
            header_err("n_tensors", format!("{n_tensors} entries cannot fit in a {file_len}-byte file"))
        })?;
        let dir_end = header.dir_offset.get() + dir_len;
        expect("tokenizer_offset", header.tokenizer_offset.get(), dir_end)?;
        // The end of a region of `len` bytes at `start`, which must lie inside the file.
        let end = |start: u64, len: u64, what: &str| {
            start.checked_add(len).filter(|&e| e <= file_len).ok_or_else(|| FormatError::Truncated {
                what: what.into(),
                needed: start.saturating_add(len),
                actual: file_len,
            })
        };
        let tok_end = end(dir_end, header.tokenizer_len.get(), "the tokenizer")?;
        let meta_end = end(tok_end, header.meta_len.get(), "the metadata")?;
        let data_offset = align_up(meta_end).expect("meta_end <= file_len, far from overflow");
        expect("data_offset", header.data_offset.get(), data_offset)?;
        if data_offset > file_len {
            return Err(FormatError::Truncated {
                what: "the tensor data".into(),
                needed: data_offset,
                actual: file_len,
            });
        }

        let region = |start: u64, len: u64| &bytes[start as usize..(start + len) as usize];
        let config_bytes = region(HEADER_LEN as u64, CONFIG_LEN as u64);
        check("config", header.config_checksum.get(), config_bytes)?;
        let dir_bytes = region(header.dir_offset.get(), dir_len);
        check("tensor directory", header.dir_checksum.get(), dir_bytes)?;
        let tok_bytes = region(dir_end, header.tokenizer_len.get());
        check("tokenizer", header.tokenizer_checksum.get(), tok_bytes)?;
        let chat = if version == 1 {
            ChatMetadata::default()
        } else {
            let meta_bytes = region(tok_end, header.meta_len.get());
            check("metadata", header.meta_checksum.get(), meta_bytes)?;
            ChatMetadata::decode(meta_bytes)?
        };

        let raw_config = RawConfig::read_from_bytes(config_bytes).expect("CONFIG_LEN bytes");
        let config = ModelConfig::from_raw(&raw_config, version, chat)?;
        let tokenizer =
            std::str::from_utf8(tok_bytes).map_err(|e| FormatError::Tokenizer(format!("not UTF-8 ({e})")))?;

        let entries = <[RawEntry]>::ref_from_bytes(dir_bytes).expect("multiple of ENTRY_LEN bytes");
        let mut tensors = Vec::with_capacity(entries.len());
        let mut seen = HashSet::with_capacity(entries.len());
        let mut prev_end = data_offset;
        for (index, raw) in entries.iter().enumerate() {
            let info = parse_entry(index, raw, prev_end, file_len, config.scale_convention, version)?;
            if !seen.insert(info.name.clone()) {
                return Err(FormatError::Entry { index, name: info.name, reason: "duplicate name".into() });
            }
            prev_end = info.offset + info.length;
            tensors.push(info);
        }
        if prev_end != file_len {
            return Err(header_err(
                "file_len",
                format!("the last tensor ends at {prev_end} but the file is {file_len} bytes"),
            ));
        }
        Ok(TernFile { bytes, header, config, tensors, tokenizer })
    }

    /// Checks every tensor checksum and every padding byte, in file order, and
    /// returns the first fault. Together with [`parse`](TernFile::parse) this
    /// covers every byte of the file.
    pub fn verify(&self) -> Result<(), FormatError> {
        let h = &self.header;
        let mut pos = h.tokenizer_offset.get() + h.tokenizer_len.get() + h.meta_len.get();
        for t in &self.tensors {
            self.check_zero(pos, t.offset, &format!("padding before tensor {}", t.name))?;
            let data = &self.bytes[t.offset as usize..(t.offset + t.length) as usize];
            check(&format!("tensor {}", t.name), t.checksum, data)?;
            check_block_scales(t, data)?;
            pos = t.offset + t.length;
        }
        // Only a file without tensors has bytes here: the padding up to `data_offset`.
        self.check_zero(pos, self.file_len(), "padding after the tokenizer")
    }

    /// Checks the checksum of one tensor only.
    pub fn verify_tensor(&self, info: &TensorInfo) -> Result<(), FormatError> {
        check(&format!("tensor {}", info.name), info.checksum, self.data(info))
    }

    fn check_zero(&self, start: u64, end: u64, region: &str) -> Result<(), FormatError> {
        let gap = &self.bytes[start as usize..end as usize];
        match gap.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(FormatError::Padding { region: region.to_string(), offset: start + i as u64 }),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tokenizer_json(&self) -> &'a str {
        self.tokenizer
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn version(&self) -> u32 {
        self.header.version.get()
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The bytes of a tensor of this file.
    pub fn data(&self, info: &TensorInfo) -> &'a [u8] {
        // In bounds: parse_entry checked offset + length <= file_len.
        &self.bytes[info.offset as usize..(info.offset + info.length) as usize]
    }

    /// The tensor called `name`, if the file has one.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        let info = self.tensors.iter().find(|t| t.name == name)?;
        Some(Tensor { info, data: self.data(info) })
    }

    /// The entry called `name`, which must exist with one of `encodings` and this shape.
    pub fn expect_tensor(&self, name: &str, encodings: &[Encoding], shape: Shape) -> Result<&TensorInfo, FormatError> {
        find_tensor(&self.tensors, name, encodings, shape)
    }
}

/// For a q6/q4 tensor (`data` its bytes): every block scale is a finite number. Other
/// encodings pass. [`TernFile::verify`] checks it for every tensor; a loader that reads
/// such a tensor without verifying the file checks it there.
pub fn check_block_scales(info: &TensorInfo, data: &[u8]) -> Result<(), FormatError> {
    let (Encoding::Q6 | Encoding::Q4, Shape::Matrix { cols, .. }) = (info.encoding, info.shape) else {
        return Ok(());
    };
    match block_quant::first_bad_scale(info.encoding, data, cols as usize) {
        None => Ok(()),
        Some((row, block)) => Err(FormatError::Tensor {
            name: info.name.clone(),
            reason: format!("row {row} block {block}: the scale is not a finite number"),
        }),
    }
}

/// The entry called `name` in `tensors`, which must exist with one of `encodings` and
/// this shape; the error names the tensor and what differs.
pub fn find_tensor<'t>(
    tensors: &'t [TensorInfo],
    name: &str,
    encodings: &[Encoding],
    shape: Shape,
) -> Result<&'t TensorInfo, FormatError> {
    let fail = |reason: String| FormatError::Tensor { name: name.to_string(), reason };
    let info = tensors.iter().find(|t| t.name == name).ok_or_else(|| fail("missing from the file".into()))?;
    if !encodings.contains(&info.encoding) {
        let want: Vec<_> = encodings.iter().map(|e| e.name()).collect();
        return Err(fail(format!("encoding {} (expected {})", info.encoding.name(), want.join(" or "))));
    }
    if info.shape != shape {
        return Err(fail(format!("shape {} (expected {shape})", info.shape)));
    }
    Ok(info)
}

fn parse_entry(
    index: usize,
    raw: &RawEntry,
    min_offset: u64,
    file_len: u64,
    convention: ScaleConvention,
    version: u32,
) -> Result<TensorInfo, FormatError> {
    let name_end = raw.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    let lossy = String::from_utf8_lossy(&raw.name[..name_end]).into_owned();
    let err = |reason: String| FormatError::Entry { index, name: lossy.clone(), reason };
    if name_end == 0 {
        return Err(err("empty name".into()));
    }
    if raw.name[name_end..].iter().any(|&b| b != 0) {
        return Err(err("name has bytes after its NUL terminator".into()));
    }
    let name = std::str::from_utf8(&raw.name[..name_end]).map_err(|_| err("name is not UTF-8".into()))?.to_string();
    let encoding = Encoding::from_code(raw.encoding.get())
        .filter(|e| e.since_version() <= version)
        .ok_or_else(|| err(format!("unknown encoding code {} in a version-{version} file", raw.encoding)))?;
    let [d0, d1] = [raw.dims[0].get(), raw.dims[1].get()];
    let shape = match raw.ndim.get() {
        1 if d1 == 0 => Shape::Vector(d0),
        2 => Shape::Matrix { rows: d0, cols: d1 },
        n => return Err(err(format!("ndim {n} with dims [{d0}, {d1}] (expected 1 with dims[1] = 0, or 2)"))),
    };
    if d0 == 0 || (shape.ndim() == 2 && d1 == 0) {
        return Err(err(format!("zero-sized shape {shape}")));
    }
    let length = tensor_bytes(encoding, shape)
        .ok_or_else(|| err(format!("shape {shape} is impossible for encoding {}", encoding.name())))?;
    if raw.length.get() != length {
        return Err(err(format!("length {} (expected {length} for {} {shape})", raw.length, encoding.name())));
    }
    let offset = raw.offset.get();
    if !offset.is_multiple_of(TENSOR_ALIGN) {
        return Err(err(format!("offset {offset} is not a multiple of {TENSOR_ALIGN}")));
    }
    if offset < min_offset {
        return Err(err(format!("offset {offset} overlaps the data before it (which ends at {min_offset})")));
    }
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(FormatError::Truncated {
            what: format!("tensor {name}"),
            needed: offset.saturating_add(length),
            actual: file_len,
        });
    }
    let scale = raw.scale.get();
    match encoding {
        Encoding::T2 if !(scale.is_finite() && scale > 0.0) => {
            return Err(err(format!("scale {scale} is not a positive number")));
        }
        Encoding::T2 if !convention.multiplier(scale).is_finite() => {
            return Err(err(format!("scale {scale} has no finite reciprocal")));
        }
        Encoding::F32 | Encoding::F16 | Encoding::Q8 | Encoding::Q6 | Encoding::Q4 if scale != 1.0 => {
            return Err(err(format!("scale {scale} (expected 1 for {})", encoding.name())));
        }
        _ => {}
    }
    if raw.reserved0.get() != 0 || raw.reserved1.iter().any(|&b| b != 0) {
        return Err(err("reserved fields are not zero".into()));
    }
    Ok(TensorInfo { name, encoding, shape, offset, length, scale, checksum: raw.checksum.get() })
}
