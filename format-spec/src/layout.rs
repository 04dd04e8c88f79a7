//! The fixed-size on-disk structs of a `.tern` file, exactly as SPEC.md lays them out.
//!
//! Every field is a little-endian zerocopy type or a byte array, so each struct has
//! alignment 1 and can be read from any offset of a memory map without a copy.

use zerocopy::little_endian::{F32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first eight bytes of every `.tern` file.
pub const MAGIC: [u8; 8] = *b"TERNB158";
/// The format version this crate writes and the newest it reads. Version 1 files (no
/// metadata region, no scale convention, one EOS id) and version 2 files (no per-linear
/// norms or biases, no q6/q4 encodings) are still read (SPEC.md, "Versioning").
pub const VERSION: u32 = 3;
/// Every tensor's data starts at a multiple of this many bytes (SPEC.md, "Alignment").
pub const TENSOR_ALIGN: u64 = 64;

pub const HEADER_LEN: usize = 128;
pub const CONFIG_LEN: usize = 128;
pub const ENTRY_LEN: usize = 128;
/// Longest tensor name, in bytes of UTF-8.
pub const NAME_LEN: usize = 64;

/// File header at offset 0 (128 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub header_len: U32,
    pub file_len: U64,
    pub config_offset: U64,
    pub config_len: U64,
    pub dir_offset: U64,
    pub n_tensors: U64,
    pub tokenizer_offset: U64,
    pub tokenizer_len: U64,
    pub data_offset: U64,
    pub config_checksum: U64,
    pub dir_checksum: U64,
    pub tokenizer_checksum: U64,
    /// Version 2: length of the metadata region after the tokenizer. Version 1: zero.
    pub meta_len: U64,
    /// Version 2: xxh3-64 of the metadata region. Version 1: zero.
    pub meta_checksum: U64,
    /// xxh3-64 of header bytes 0..120 (everything before this field).
    pub header_checksum: U64,
}

/// Model configuration (128 bytes), right after the header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawConfig {
    pub arch: U32,
    pub activation: U32,
    pub flags: U32,
    pub vocab_size: U32,
    pub hidden_size: U32,
    pub intermediate_size: U32,
    pub n_layers: U32,
    pub n_heads: U32,
    pub n_kv_heads: U32,
    pub head_dim: U32,
    pub max_positions: U32,
    pub rope_theta: F32,
    pub rms_eps: F32,
    pub bos_id: U32,
    pub eos_id: U32,
    pub pad_id: U32,
    pub gen_temperature: F32,
    pub gen_top_k: U32,
    pub gen_top_p: F32,
    pub gen_repeat_penalty: F32,
    /// Version 2: [`ScaleConvention`](crate::ScaleConvention) code. Version 1: zero.
    pub scale_convention: U32,
    /// Version 2: [`WeightsSource`](crate::WeightsSource) code. Version 1: zero.
    pub weights_source: U32,
    /// Version 2: further end-of-sequence ids, used slots first, then `NO_TOKEN`. Version 1: zero.
    pub extra_eos: [U32; 7],
    /// Version 3: the epsilon of the per-linear input norms (flag `LINEAR_NORM`), else zero.
    /// Versions 1 and 2: zero.
    pub linear_norm_eps: F32,
    pub reserved: [u8; 8],
}

/// One tensor-directory entry (128 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawEntry {
    /// UTF-8 name, padded with NUL bytes.
    pub name: [u8; NAME_LEN],
    pub encoding: U32,
    pub ndim: U32,
    pub dims: [U64; 2],
    pub offset: U64,
    pub length: U64,
    pub scale: F32,
    pub reserved0: U32,
    /// xxh3-64 of the tensor's `length` bytes.
    pub checksum: U64,
    pub reserved1: [u8; 8],
}

const _: () = assert!(size_of::<RawHeader>() == HEADER_LEN);
const _: () = assert!(size_of::<RawConfig>() == CONFIG_LEN);
const _: () = assert!(size_of::<RawEntry>() == ENTRY_LEN);

/// Bytes of the header covered by `header_checksum`.
pub const HEADER_CHECKSUMMED: usize = HEADER_LEN - 8;

/// The checksum used everywhere in the format.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// `x` rounded up to a multiple of [`TENSOR_ALIGN`], or `None` on overflow.
pub fn align_up(x: u64) -> Option<u64> {
    Some(x.checked_add(TENSOR_ALIGN - 1)? / TENSOR_ALIGN * TENSOR_ALIGN)
}
