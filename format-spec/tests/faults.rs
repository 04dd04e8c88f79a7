//! The reader on damaged and crafted files: every fault is a clean, named error.

use std::io::Cursor;
use tern_format::ternary::{pack_row, row_bytes};
use tern_format::*;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::BitnetLlama,
        activation: Activation::Silu,
        attn_sub_norm: true,
        ffn_sub_norm: true,
        tied_output: true,
        vocab_size: 10,
        hidden_size: 8,
        intermediate_size: 16,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        max_positions: 32,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        bos_id: Some(1),
        eos_id: Some(2),
        extra_eos: vec![],
        pad_id: None,
        generation: GenerationDefaults::default(),
        scale_convention: ScaleConvention::Multiply,
        weights_source: WeightsSource::Master,
        chat: ChatMetadata::default(),
        linear: LinearExtras::default(),
    }
}

const TOKENIZER: &str = r#"{"model":{"type":"BPE","vocab":{"a":0}},"note":"padding to an odd length"}"#;

/// A small file with one tensor of each encoding: t2 [3, 300] (row padding), f16 [4, 5], f32 [7].
fn sample() -> Vec<u8> {
    let specs = [
        TensorSpec { name: "w".into(), encoding: Encoding::T2, shape: Shape::Matrix { rows: 3, cols: 300 } },
        TensorSpec { name: "e".into(), encoding: Encoding::F16, shape: Shape::Matrix { rows: 4, cols: 5 } },
        TensorSpec { name: "n".into(), encoding: Encoding::F32, shape: Shape::Vector(7) },
    ];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &config(), TOKENIZER.as_bytes(), &specs).unwrap();
    let mut t2 = vec![0u8; 3 * row_bytes(300)];
    for (r, out) in t2.chunks_mut(row_bytes(300)).enumerate() {
        let row: Vec<i8> = (0..300).map(|c| ((c + r) % 3) as i8 - 1).collect();
        pack_row(&row, out);
    }
    w.write_tensor(&t2, 0.25).unwrap();
    let f16: Vec<u8> = (0..20).flat_map(|i| half_bits(i as f32 * 0.5)).collect();
    w.write_tensor(&f16, 1.0).unwrap();
    let f32s: Vec<u8> = (0..7).flat_map(|i| (i as f32 + 0.5).to_le_bytes()).collect();
    w.write_tensor(&f32s, 1.0).unwrap();
    w.finish().unwrap().into_inner()
}

/// f16 bits of small exact values (enough for a test; no half crate here).
fn half_bits(v: f32) -> [u8; 2] {
    if v == 0.0 {
        return [0, 0];
    }
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = (bits >> 13) & 0x3ff;
    (((exp as u32) << 10 | mant) as u16).to_le_bytes()
}

fn full_check(bytes: &[u8]) -> Result<(), FormatError> {
    TernFile::parse(bytes)?.verify()
}

/// Recomputes the directory and header checksums after a deliberate edit, so that the
/// structural checks, not the checksums, must catch it.
fn reseal(bytes: &mut [u8]) {
    let (mut header, _) = RawHeader::read_from_prefix(bytes).unwrap();
    let dir = header.dir_offset.get() as usize;
    let n = header.n_tensors.get() as usize;
    header.dir_checksum = U64::new(checksum(&bytes[dir..dir + n * ENTRY_LEN]));
    let hb = header.as_bytes();
    header.header_checksum = U64::new(checksum(&hb[..HEADER_LEN - 8]));
    bytes[..HEADER_LEN].copy_from_slice(header.as_bytes());
}

fn entry_mut(bytes: &mut [u8], i: usize) -> &mut RawEntry {
    let at = HEADER_LEN + CONFIG_LEN + i * ENTRY_LEN;
    RawEntry::mut_from_bytes(&mut bytes[at..at + ENTRY_LEN]).unwrap()
}

#[test]
fn sample_round_trips() {
    let bytes = sample();
    let f = TernFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    assert_eq!(f.config(), &config());
    assert_eq!(f.tokenizer_json(), TOKENIZER);
    let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "e", "n"]);
    let w = f.tensor("w").unwrap();
    assert_eq!((w.info.scale, w.data.len()), (0.25, 3 * 128));
    assert!(f.tensors().iter().all(|t| t.offset % TENSOR_ALIGN == 0));
    assert_eq!(
        f.tensor("n").unwrap().data,
        &(0..7).flat_map(|i| (i as f32 + 0.5).to_le_bytes()).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        f.expect_tensor("e", &[Encoding::F32], Shape::Matrix { rows: 4, cols: 5 }).unwrap_err().to_string(),
        "tensor e: encoding f16 (expected f32)"
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let good = sample();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            assert!(full_check(&bad).is_err(), "flipping bit {bit:#x} of byte {i} went unnoticed");
        }
    }
}

#[test]
fn a_flip_names_its_region() {
    let good = sample();
    let f = TernFile::parse(&good).unwrap();
    let tok_at = HEADER_LEN + CONFIG_LEN + 3 * ENTRY_LEN;
    let t = |n: &str| f.tensor(n).unwrap().info.offset as usize;
    let e_end = t("e") + f.tensor("e").unwrap().info.length as usize;
    let cases = [
        (20, "checksum mismatch in header"),
        (HEADER_LEN + 20, "checksum mismatch in config"),
        (HEADER_LEN + CONFIG_LEN + 70, "checksum mismatch in tensor directory"),
        (tok_at + 10, "checksum mismatch in tokenizer"),
        (t("w") + 5, "checksum mismatch in tensor w"),
        (t("e") + 1, "checksum mismatch in tensor e"),
        (t("n") + 27, "checksum mismatch in tensor n"),
        (tok_at + TOKENIZER.len(), "checksum mismatch in metadata"),
        (tok_at + TOKENIZER.len() + 4, "non-zero padding byte"),
        (e_end + 3, "padding before tensor n"),
    ];
    for (at, want) in cases {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let err = full_check(&bad).unwrap_err().to_string();
        assert!(err.contains(want), "byte {at}: {err:?} does not contain {want:?}");
    }
}

#[test]
fn every_truncation_is_a_clean_error() {
    let good = sample();
    for len in 0..good.len() {
        let err = TernFile::parse(&good[..len]).unwrap_err().to_string();
        assert!(
            err.contains("truncated") || err.contains("not a .tern file") || err.contains("checksum"),
            "length {len}: {err}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(TernFile::parse(&longer).unwrap_err().to_string().contains("extra bytes appended"));
    assert!(TernFile::parse(&[]).unwrap_err().to_string().contains("truncated"));
}

#[test]
fn newer_version_asks_for_an_upgrade() {
    let mut bytes = sample();
    bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let err = TernFile::parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("made by a newer tern") && err.contains("upgrade"), "{err}");
}

#[test]
fn bad_magic() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert!(TernFile::parse(&bytes).unwrap_err().to_string().contains("not a .tern file"));
}

#[test]
fn crafted_directories_are_rejected_without_large_allocations() {
    let good = sample();
    type Edit = fn(&mut [u8]);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "overlap",
            |b| {
                let e = entry_mut(b, 0).offset.get();
                entry_mut(b, 1).offset = U64::new(e);
            },
            "overlaps",
        ),
        ("past the end", |b| entry_mut(b, 2).offset = U64::new(1 << 40), "truncated"),
        (
            "size overflows u64",
            |b| {
                let e = entry_mut(b, 1);
                e.dims = [U64::new(u64::MAX / 2), U64::new(3)];
            },
            "impossible",
        ),
        (
            "misaligned",
            |b| {
                let o = entry_mut(b, 2).offset.get();
                entry_mut(b, 2).offset = U64::new(o + 4);
            },
            "not a multiple of 64",
        ),
        (
            "wrong length",
            |b| {
                let l = entry_mut(b, 2).length.get();
                entry_mut(b, 2).length = U64::new(l + 4);
            },
            "length",
        ),
        ("duplicate name", |b| entry_mut(b, 1).name = entry_mut(b, 0).name, "duplicate name"),
        ("unknown encoding", |b| entry_mut(b, 0).encoding.set(9), "unknown encoding"),
    ];
    for (what, edit, want) in cases {
        let mut bad = good.clone();
        edit(&mut bad);
        reseal(&mut bad);
        let err = TernFile::parse(&bad).unwrap_err().to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    // A directory claiming 2^60 entries is refused before anything is allocated for it.
    let mut bad = good.clone();
    let (mut h, _) = RawHeader::read_from_prefix(&bad).unwrap();
    h.n_tensors = U64::new(1 << 60);
    h.header_checksum = U64::new(checksum(&h.as_bytes()[..HEADER_LEN - 8]));
    bad[..HEADER_LEN].copy_from_slice(h.as_bytes());
    let err = TernFile::parse(&bad).unwrap_err().to_string();
    assert!(err.contains("cannot fit"), "{err}");
}

#[test]
fn writer_refuses_misuse() {
    let specs = [TensorSpec { name: "w".into(), encoding: Encoding::T2, shape: Shape::Matrix { rows: 2, cols: 10 } }];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &config(), b"{}", &specs).unwrap();
    assert!(w.write_tensor(&[0u8; 10], 1.0).unwrap_err().to_string().contains("128 expected"));
    assert!(w.write_tensor(&[0u8; 128], f32::NAN).is_err());
    w.write_tensor(&[0x55u8; 128], 0.5).unwrap();
    assert!(w.write_tensor(&[0u8; 128], 0.5).is_err());
    let long = TensorSpec { name: "x".repeat(65), encoding: Encoding::F32, shape: Shape::Vector(1) };
    assert!(TernWriter::new(Cursor::new(Vec::new()), &config(), b"{}", &[long]).is_err());
    let vector_t2 = TensorSpec { name: "v".into(), encoding: Encoding::T2, shape: Shape::Vector(4) };
    assert!(TernWriter::new(Cursor::new(Vec::new()), &config(), b"{}", &[vector_t2]).is_err());
    let unfinished = TernWriter::new(Cursor::new(Vec::new()), &config(), b"{}", &specs).unwrap();
    assert!(unfinished.finish().unwrap_err().to_string().contains("never written"));
}

#[test]
fn config_validation_names_the_field() {
    let mut c = config();
    c.n_kv_heads = 3;
    assert!(c.validate().unwrap_err().to_string().contains("n_kv_heads"));
    let mut c = config();
    c.head_dim = 5;
    assert!(c.validate().unwrap_err().to_string().contains("head_dim"));
    let mut c = config();
    c.eos_id = Some(10);
    assert!(c.validate().unwrap_err().to_string().contains("eos_id"));
    let mut c = config();
    c.rms_eps = f32::NAN;
    assert!(c.validate().unwrap_err().to_string().contains("rms_eps"));
    let mut c = config();
    c.extra_eos = vec![3, 10];
    assert_eq!(c.validate().unwrap_err().to_string(), "config field extra_eos: 10 is not below vocab_size 10");
    c.extra_eos = vec![3, 2];
    assert_eq!(c.validate().unwrap_err().to_string(), "config field extra_eos: [2, 3, 2] lists an id twice");
    c.extra_eos = vec![3; 8];
    assert!(c.validate().unwrap_err().to_string().contains("8 ids (at most 7)"));
    c.extra_eos = vec![3];
    c.eos_id = None;
    assert!(c.validate().unwrap_err().to_string().contains("without an eos_id"));
    let mut c = config();
    c.generation.top_p = 0.0;
    assert_eq!(c.validate().unwrap_err().to_string(), "config field gen_top_p: 0 is outside (0, 1]");
}

/// A pre-packed model's config: divide convention, an EOS list, a chat template.
fn packed_config() -> ModelConfig {
    ModelConfig {
        extra_eos: vec![7, 9],
        scale_convention: ScaleConvention::Divide,
        weights_source: WeightsSource::Prepacked,
        chat: ChatMetadata {
            chat_template: Some(
                "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}".into(),
            ),
            bos_token: Some("<|begin_of_text|>".into()),
            eos_token: Some("<|eot_id|>".into()),
        },
        ..config()
    }
}

#[test]
fn version_2_fields_round_trip() {
    let specs = [TensorSpec { name: "w".into(), encoding: Encoding::T2, shape: Shape::Matrix { rows: 2, cols: 10 } }];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &packed_config(), TOKENIZER.as_bytes(), &specs).unwrap();
    // 1/s_w must be finite: the smallest subnormal's reciprocal is not.
    assert!(w.write_tensor(&[0x55u8; 128], f32::from_bits(1)).unwrap_err().to_string().contains("not valid"));
    w.write_tensor(&[0x55u8; 128], 4.0).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let f = TernFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    assert_eq!(f.version(), VERSION);
    assert_eq!(f.config(), &packed_config());
    assert_eq!(f.config().eos_ids().collect::<Vec<_>>(), [2, 7, 9]);
    assert!(f.config().is_eos(9) && !f.config().is_eos(3));
    let t = f.tensor("w").unwrap();
    assert_eq!((t.info.scale, f.config().scale_convention.multiplier(t.info.scale)), (4.0, 0.25));

    // Every byte of the metadata region is covered by its checksum.
    let (h, _) = RawHeader::read_from_prefix(&bytes).unwrap();
    let meta_at = (h.tokenizer_offset.get() + h.tokenizer_len.get()) as usize;
    assert!(h.meta_len.get() > 40);
    for i in 0..h.meta_len.get() as usize {
        let mut bad = bytes.clone();
        bad[meta_at + i] ^= 0x20;
        assert!(TernFile::parse(&bad).unwrap_err().to_string().contains("checksum mismatch in metadata"), "byte {i}");
    }
    // A stored scale without a finite reciprocal is refused under the divide convention.
    let mut bad = bytes.clone();
    entry_mut(&mut bad, 0).scale.set(f32::from_bits(1));
    reseal(&mut bad);
    assert!(TernFile::parse(&bad).unwrap_err().to_string().contains("has no finite reciprocal"));
    // Used EOS slots come first.
    let err = parse_err_after_config_edit(&bytes, |raw| raw.extra_eos[0].set(NO_TOKEN));
    assert!(err.contains("extra_eos: an unused slot comes before"), "{err}");
    let err = parse_err_after_config_edit(&bytes, |raw| raw.scale_convention.set(3));
    assert!(err.contains("unknown scale convention code 3"), "{err}");
    let err = parse_err_after_config_edit(&bytes, |raw| raw.weights_source.set(4));
    assert!(err.contains("weights_source: unknown weights source code 4"), "{err}");
}

#[test]
fn i2s_gguf_weights_source_round_trips() {
    let config = ModelConfig {
        scale_convention: ScaleConvention::Multiply,
        weights_source: WeightsSource::I2sGguf,
        ..packed_config()
    };
    let specs = [TensorSpec { name: "w".into(), encoding: Encoding::T2, shape: Shape::Matrix { rows: 2, cols: 10 } }];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &config, TOKENIZER.as_bytes(), &specs).unwrap();
    w.write_tensor(&[0x55u8; 128], 0.5).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let f = TernFile::parse(&bytes).unwrap();
    assert_eq!(f.config().weights_source, WeightsSource::I2sGguf);
    assert!(f.config().weights_source.name().starts_with("I2_S GGUF"));
}

/// Version 3's per-linear input norms and biases: the flags and `linear_norm_eps` round
/// trip; the flag bits are refused in an older version's file, and the epsilon without its
/// flag.
#[test]
fn version_3_linear_extras_round_trip() {
    let config =
        ModelConfig { linear: LinearExtras { norm_eps: Some(1e-6), attn_bias: true, mlp_bias: false }, ..config() };
    let specs = [TensorSpec { name: "w".into(), encoding: Encoding::T2, shape: Shape::Matrix { rows: 2, cols: 10 } }];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &config, TOKENIZER.as_bytes(), &specs).unwrap();
    w.write_tensor(&[0x55u8; 128], 4.0).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let f = TernFile::parse(&bytes).unwrap();
    assert_eq!((f.version(), f.config()), (3, &config));
    let raw = RawConfig::read_from_bytes(&bytes[HEADER_LEN..HEADER_LEN + CONFIG_LEN]).unwrap();
    assert_eq!((raw.flags.get(), raw.linear_norm_eps.get()), (0b01_1111, 1e-6));

    let err = parse_err_after_config_edit(&bytes, |raw| raw.linear_norm_eps.set(0.0));
    assert!(err.contains("config field linear_norm_eps: 0 is not a positive number"), "{err}");
    let err = parse_err_after_config_edit(&bytes, |raw| raw.flags.set(raw.flags.get() & !flags::LINEAR_NORM));
    assert!(err.contains("config field linear_norm_eps: set without the LINEAR_NORM flag"), "{err}");
    let mut v2 = bytes.clone();
    let (mut h, _) = RawHeader::read_from_prefix(&v2).unwrap();
    h.version.set(2);
    v2[..HEADER_LEN].copy_from_slice(h.as_bytes());
    reseal(&mut v2);
    let err = TernFile::parse(&v2).unwrap_err().to_string();
    assert!(err.contains("config field flags: bits 0x18 need format version 3"), "{err}");
}

/// The parse error of `bytes` after `edit` of its config (with every checksum resealed).
fn parse_err_after_config_edit(bytes: &[u8], edit: impl FnOnce(&mut RawConfig)) -> String {
    let mut bad = bytes.to_vec();
    edit(RawConfig::mut_from_bytes(&mut bad[HEADER_LEN..HEADER_LEN + CONFIG_LEN]).unwrap());
    let sum = checksum(&bad[HEADER_LEN..HEADER_LEN + CONFIG_LEN]);
    let (mut header, _) = RawHeader::read_from_prefix(&bad).unwrap();
    header.config_checksum = U64::new(sum);
    bad[..HEADER_LEN].copy_from_slice(header.as_bytes());
    reseal(&mut bad);
    TernFile::parse(&bad).unwrap_err().to_string()
}

/// A file written by tern-convert at format version 1 (before pre-packed models) still
/// loads: master weights, the multiply convention, one EOS id, no chat metadata.
#[test]
fn version_1_files_keep_loading() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1-tiny-odd-gqa-bf16.tern")).unwrap();
    let f = TernFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    assert_eq!(f.version(), 1);
    let c = f.config();
    assert_eq!((c.scale_convention, c.weights_source), (ScaleConvention::Multiply, WeightsSource::Master));
    assert_eq!((c.eos_id, c.extra_eos.len(), &c.chat), (Some(2), 0, &ChatMetadata::default()));
    assert_eq!((c.hidden_size, c.n_heads, c.n_kv_heads, f.tensors().len()), (96, 6, 2, 24));
    // Its reserved bytes stay reserved: a version-1 header with metadata fields is damaged.
    let mut bad = bytes.clone();
    let (mut h, _) = RawHeader::read_from_prefix(&bad).unwrap();
    h.meta_len = U64::new(4);
    bad[..HEADER_LEN].copy_from_slice(h.as_bytes());
    reseal(&mut bad);
    assert!(TernFile::parse(&bad).unwrap_err().to_string().contains("header field reserved"));
    let err = parse_err_after_config_edit(&bytes, |raw| raw.scale_convention.set(2));
    assert!(err.contains("config field reserved"), "{err}");
}

/// Without tensors the padding after the tokenizer is the file's last bytes: still checked.
#[test]
fn padding_of_a_file_without_tensors_is_checked() {
    let w = TernWriter::new(Cursor::new(Vec::new()), &config(), b"{}", &[]).unwrap();
    let good = w.finish().unwrap().into_inner();
    // Header, config, a 2-byte tokenizer and the 4-byte empty metadata region, padded.
    assert_eq!(good.len() as u64, align_up((HEADER_LEN + CONFIG_LEN + 2 + 4) as u64).unwrap());
    full_check(&good).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() = 1;
    assert!(full_check(&bad).unwrap_err().to_string().contains("padding after the tokenizer"));
}

/// q6 and q4 matrices (version 3): written, read back and dequantized by row; refused in a
/// version-2 file; a non-finite block scale is named by `verify`.
#[test]
fn block_quantized_matrices() {
    use tern_format::block_quant::{dequantize_row, pack_block, row_bytes, BLOCK};
    let shape = Shape::Matrix { rows: 3, cols: 40 };
    let specs = [
        TensorSpec { name: "q6".into(), encoding: Encoding::Q6, shape },
        TensorSpec { name: "q4".into(), encoding: Encoding::Q4, shape },
    ];
    let mut w = TernWriter::new(Cursor::new(Vec::new()), &config(), TOKENIZER.as_bytes(), &specs).unwrap();
    for enc in [Encoding::Q6, Encoding::Q4] {
        let rb = row_bytes(enc, 40);
        let mut data = vec![0u8; 3 * rb];
        for (r, row) in data.chunks_mut(rb).enumerate() {
            for (b, block) in row.chunks_mut(rb / 2).enumerate() {
                let q: Vec<i8> = (0..BLOCK.min(40 - b * BLOCK)).map(|i| (i % 7) as i8 - 3).collect();
                pack_block(enc, half::f16::from_f32((r + 1) as f32 * 0.25), &q, block);
            }
        }
        w.write_tensor(&data, 1.0).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    let f = TernFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    let t = f.tensor("q4").unwrap();
    assert_eq!(t.info.length, 3 * 2 * 18);
    let mut row = [0f32; 40];
    let rb = row_bytes(Encoding::Q4, 40);
    dequantize_row(Encoding::Q4, &t.data[2 * rb..3 * rb], &mut row);
    assert_eq!((row[0], row[6], row[32], row[38]), (-2.25, 2.25, -2.25, 2.25));

    let mut v2 = bytes.clone();
    v2[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut v2);
    let err = TernFile::parse(&v2).unwrap_err().to_string();
    assert!(err.contains("(q6)") && err.contains("unknown encoding code 4 in a version-2 file"), "{err}");

    // Row 1, block 1 of q6 gets a NaN scale (f16 0x7E00); its checksum is resealed too.
    let mut bad = bytes.clone();
    let info = f.tensor("q6").unwrap().info.clone();
    let at = info.offset as usize + row_bytes(Encoding::Q6, 40) + 26;
    bad[at..at + 2].copy_from_slice(&[0x00, 0x7E]);
    let sum = checksum(&bad[info.offset as usize..(info.offset + info.length) as usize]);
    entry_mut(&mut bad, 0).checksum.set(sum);
    reseal(&mut bad);
    let err = full_check(&bad).unwrap_err().to_string();
    assert_eq!(err, "tensor q6: row 1 block 1: the scale is not a finite number");
}
