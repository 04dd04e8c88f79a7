//! Streaming writer: the layout is fixed up front from the tensor list, tensors are
//! written one at a time (only one needs to be in memory), and the directory and header
//! with their checksums are written last.

use crate::layout::{checksum, RawEntry, RawHeader, HEADER_CHECKSUMMED};
use crate::{align_up, tensor_bytes, Encoding, FormatError, ModelConfig, ScaleConvention, Shape};
use crate::{CONFIG_LEN, ENTRY_LEN, HEADER_LEN, MAGIC, NAME_LEN, TENSOR_ALIGN, VERSION};
use std::io::{Seek, SeekFrom, Write};
use zerocopy::little_endian::{F32, U32, U64};
use zerocopy::IntoBytes;

/// A tensor to be written: everything but its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub encoding: Encoding,
    pub shape: Shape,
}

/// Writes a `.tern` file to `W`. Call [`write_tensor`](TernWriter::write_tensor) once per
/// spec, in order, then [`finish`](TernWriter::finish). Nothing in the file is valid until
/// `finish` has written the header, so an interrupted write never looks like a good file.
pub struct TernWriter<W: Write + Seek> {
    out: W,
    header: RawHeader,
    entries: Vec<RawEntry>,
    next: usize,
    pos: u64,
    convention: ScaleConvention,
}

impl<W: Write + Seek> TernWriter<W> {
    pub fn new(
        mut out: W,
        config: &ModelConfig,
        tokenizer_json: &[u8],
        specs: &[TensorSpec],
    ) -> Result<Self, FormatError> {
        config.validate()?;
        let meta = config.chat.encode()?;
        let mut entries = Vec::with_capacity(specs.len());
        let dir_offset = (HEADER_LEN + CONFIG_LEN) as u64;
        let tok_offset = dir_offset + (specs.len() * ENTRY_LEN) as u64;
        let tok_end = tok_offset + tokenizer_json.len() as u64;
        let meta_end = tok_end + meta.len() as u64;
        let data_offset = align_up(meta_end).expect("small");
        let mut offset = data_offset;
        for (index, s) in specs.iter().enumerate() {
            let err = |reason: String| FormatError::Entry { index, name: s.name.clone(), reason };
            if s.name.is_empty() || s.name.len() > NAME_LEN || s.name.contains('\0') {
                return Err(err(format!("name must be 1..={NAME_LEN} bytes without NUL")));
            }
            let length = tensor_bytes(s.encoding, s.shape)
                .ok_or_else(|| err(format!("shape {} is impossible for {}", s.shape, s.encoding.name())))?;
            let mut name = [0u8; NAME_LEN];
            name[..s.name.len()].copy_from_slice(s.name.as_bytes());
            let dims = s.shape.dims();
            entries.push(RawEntry {
                name,
                encoding: U32::new(s.encoding as u32),
                ndim: U32::new(s.shape.ndim()),
                dims: [U64::new(dims[0]), U64::new(dims[1])],
                offset: U64::new(offset),
                length: U64::new(length),
                scale: F32::new(1.0),
                reserved0: U32::new(0),
                checksum: U64::new(0),
                reserved1: [0; 8],
            });
            offset =
                offset.checked_add(length).and_then(align_up).ok_or_else(|| err("file size overflows u64".into()))?;
        }
        // The last tensor is not padded: the file ends where its data ends.
        let file_len = match entries.last() {
            Some(e) => e.offset.get() + e.length.get(),
            None => data_offset,
        };
        let config_raw = config.to_raw();
        let header = RawHeader {
            magic: MAGIC,
            version: U32::new(VERSION),
            header_len: U32::new(HEADER_LEN as u32),
            file_len: U64::new(file_len),
            config_offset: U64::new(HEADER_LEN as u64),
            config_len: U64::new(CONFIG_LEN as u64),
            dir_offset: U64::new(dir_offset),
            n_tensors: U64::new(specs.len() as u64),
            tokenizer_offset: U64::new(tok_offset),
            tokenizer_len: U64::new(tokenizer_json.len() as u64),
            data_offset: U64::new(data_offset),
            config_checksum: U64::new(checksum(config_raw.as_bytes())),
            dir_checksum: U64::new(0),
            tokenizer_checksum: U64::new(checksum(tokenizer_json)),
            meta_len: U64::new(meta.len() as u64),
            meta_checksum: U64::new(checksum(&meta)),
            header_checksum: U64::new(0),
        };
        // A zeroed header until `finish`: an interrupted file has no valid magic.
        out.write_all(&[0u8; HEADER_LEN])?;
        out.write_all(config_raw.as_bytes())?;
        out.write_all(&vec![0u8; specs.len() * ENTRY_LEN])?;
        out.write_all(tokenizer_json)?;
        out.write_all(&meta)?;
        let mut w = TernWriter { out, header, entries, next: 0, pos: meta_end, convention: config.scale_convention };
        w.pad_to(data_offset)?;
        Ok(w)
    }

    fn pad_to(&mut self, offset: u64) -> std::io::Result<()> {
        debug_assert!(offset >= self.pos && offset - self.pos < TENSOR_ALIGN);
        let zeros = [0u8; TENSOR_ALIGN as usize];
        self.out.write_all(&zeros[..(offset - self.pos) as usize])?;
        self.pos = offset;
        Ok(())
    }

    /// The name of the tensor the writer expects next, if any.
    pub fn next_name(&self) -> Option<String> {
        let e = self.entries.get(self.next)?;
        let end = e.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        Some(String::from_utf8_lossy(&e.name[..end]).into_owned())
    }

    /// Writes the next tensor's bytes (exactly the length its spec implies) and its
    /// scale: for `t2` as the config's scale convention defines it (SPEC.md §6), 1.0 for
    /// float encodings.
    pub fn write_tensor(&mut self, data: &[u8], scale: f32) -> Result<(), FormatError> {
        let name = self.next_name().ok_or_else(|| FormatError::Tensor {
            name: "(none)".into(),
            reason: "more tensors written than specified".into(),
        })?;
        let e = &mut self.entries[self.next];
        if data.len() as u64 != e.length.get() {
            return Err(FormatError::Tensor {
                name,
                reason: format!("{} bytes written, {} expected", data.len(), e.length),
            });
        }
        let float = e.encoding.get() != Encoding::T2 as u32;
        let valid = scale.is_finite() && scale > 0.0 && self.convention.multiplier(scale).is_finite();
        if (float && scale != 1.0) || !valid {
            return Err(FormatError::Tensor { name, reason: format!("scale {scale} is not valid for this encoding") });
        }
        e.scale = F32::new(scale);
        e.checksum = U64::new(checksum(data));
        let offset = e.offset.get();
        self.pad_to(offset)?;
        self.out.write_all(data)?;
        self.pos += data.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// Writes the directory and header; returns the inner writer (the caller syncs it).
    pub fn finish(mut self) -> Result<W, FormatError> {
        if let Some(name) = self.next_name() {
            return Err(FormatError::Tensor { name, reason: "never written".into() });
        }
        let dir = self.entries.as_bytes();
        self.header.dir_checksum = U64::new(checksum(dir));
        self.out.seek(SeekFrom::Start(self.header.dir_offset.get()))?;
        self.out.write_all(dir)?;
        let sum = checksum(&self.header.as_bytes()[..HEADER_CHECKSUMMED]);
        self.header.header_checksum = U64::new(sum);
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(self.header.as_bytes())?;
        self.out.seek(SeekFrom::Start(self.header.file_len.get()))?;
        self.out.flush()?;
        Ok(self.out)
    }
}
