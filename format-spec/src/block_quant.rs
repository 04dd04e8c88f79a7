//! The `q6` and `q4` encodings: a float matrix (the embedding / output projection) in
//! blocks of [`BLOCK`] values along a row, each block one f16 scale and 6- or 4-bit
//! signed integers (SPEC.md §6).
//!
//! A row of `cols` values is padded with zero values to whole blocks; its blocks follow
//! each other with no gap, and rows follow each other with no gap, so every row is
//! self-contained: the embedding lookup reads and dequantizes one row, the output matvec
//! streams them all. A block is its scale `d` (f16, little-endian), then the packed codes
//! `c = q + Z` of its values `d · q`:
//!
//! - **q4** (18 bytes, `q` in -8..=7, `Z` = 8): byte `2 + j` (j = 0..15) holds the code of
//!   value `j` in its low nibble and of value `j + 16` in its high nibble.
//! - **q6** (26 bytes, `q` in -32..=31, `Z` = 32): bytes 2..18 hold the low four bits of
//!   the codes as q4 holds its codes; byte `18 + k` (k = 0..7) holds the top two bits of the
//!   codes of values `k`, `k + 8`, `k + 16` and `k + 24` in its bit pairs 0–1, 2–3, 4–5, 6–7.
//!
//! Why: one 16-byte load gives, masked and shifted by 4, the codes of values 0..15 and
//! 16..31, which line up with two consecutive 16-lane vectors of activations; q6's top
//! bits for those same 16-lane groups come from one 8-byte load shifted per lane.

use crate::Encoding;
use half::f16;

/// Values per block.
pub const BLOCK: usize = 32;

/// Bytes of one block of `encoding` (q6 or q4).
pub fn block_bytes(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Q6 => 2 + BLOCK / 2 + BLOCK / 4,
        Encoding::Q4 => 2 + BLOCK / 2,
        other => panic!("{} is not a block-quantized encoding", other.name()),
    }
}

/// Blocks of a row of `cols` values.
pub fn blocks(cols: usize) -> usize {
    cols.div_ceil(BLOCK)
}

/// Bytes of one row of `cols` values of `encoding` (q6 or q4).
pub fn row_bytes(encoding: Encoding, cols: usize) -> usize {
    blocks(cols) * block_bytes(encoding)
}

/// The range of the integers `q` of `encoding`: `(min, max)`.
pub fn q_range(encoding: Encoding) -> (i8, i8) {
    match encoding {
        Encoding::Q6 => (-32, 31),
        Encoding::Q4 => (-8, 7),
        other => panic!("{} is not a block-quantized encoding", other.name()),
    }
}

/// Writes one block: scale `d` and integers `q` (each in [`q_range`]; fewer than
/// [`BLOCK`] for a row's last block, the rest being padding zeros) into `out`
/// ([`block_bytes`] long).
///
/// # Panics
/// If `out` has the wrong length or a `q` is out of range: both are the caller's bugs.
pub fn pack_block(encoding: Encoding, d: f16, q: &[i8], out: &mut [u8]) {
    assert_eq!(out.len(), block_bytes(encoding), "block length");
    assert!(q.len() <= BLOCK, "at most {BLOCK} values per block");
    let (lo, hi) = q_range(encoding);
    let zero = -lo;
    let mut codes = [zero as u8; BLOCK];
    for (i, &v) in q.iter().enumerate() {
        assert!((lo..=hi).contains(&v), "value {v} at {i} is outside {lo}..={hi}");
        codes[i] = (v + zero) as u8;
    }
    out[..2].copy_from_slice(&d.to_le_bytes());
    for j in 0..BLOCK / 2 {
        out[2 + j] = (codes[j] & 0x0F) | (codes[j + 16] & 0x0F) << 4;
    }
    if encoding == Encoding::Q6 {
        for k in 0..BLOCK / 4 {
            out[18 + k] = (0..4).fold(0, |b, i| b | (codes[k + 8 * i] >> 4) << (2 * i));
        }
    }
}

/// One block's scale and integers, as [`pack_block`] wrote them.
pub fn unpack_block(encoding: Encoding, block: &[u8]) -> (f16, [i8; BLOCK]) {
    let d = f16::from_le_bytes([block[0], block[1]]);
    let mut q = [0i8; BLOCK];
    let zero = -q_range(encoding).0;
    for j in 0..BLOCK / 2 {
        q[j] = (block[2 + j] & 0x0F) as i8;
        q[j + 16] = (block[2 + j] >> 4) as i8;
    }
    if encoding == Encoding::Q6 {
        for (i, v) in q.iter_mut().enumerate() {
            let (k, pair) = (i % 8, i / 8);
            *v |= (((block[18 + k] >> (2 * pair)) & 3) << 4) as i8;
        }
    }
    (d, q.map(|c| c - zero))
}

/// Row `r`'s `out.len()` values from the row's bytes (`row_bytes(encoding, out.len())`).
pub fn dequantize_row(encoding: Encoding, row: &[u8], out: &mut [f32]) {
    let bb = block_bytes(encoding);
    for (block, out) in row.chunks_exact(bb).zip(out.chunks_mut(BLOCK)) {
        let (d, q) = unpack_block(encoding, block);
        let d = d.to_f32();
        for (o, &q) in out.iter_mut().zip(&q) {
            *o = d * f32::from(q);
        }
    }
}

/// The first block (row, block index) of a matrix of `encoding` whose scale is not a
/// finite number, if any. `data` holds whole rows of `cols` values.
pub fn first_bad_scale(encoding: Encoding, data: &[u8], cols: usize) -> Option<(usize, usize)> {
    let (bb, per_row) = (block_bytes(encoding), blocks(cols));
    data.chunks_exact(bb)
        .position(|b| !f16::from_le_bytes([b[0], b[1]]).is_finite())
        .map(|i| (i / per_row, i % per_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC.md §6's worked example.
    #[test]
    fn worked_example() {
        let mut q = [0i8; BLOCK];
        (q[0], q[1], q[8], q[16], q[31]) = (-32, 31, 5, -1, 17);
        let mut b = [0u8; 26];
        pack_block(Encoding::Q6, f16::from_f32(0.5), &q, &mut b);
        // 0.5 is f16 0x3800; codes: 0, 63, 37, 31, 49, others 32 (0b10_0000).
        assert_eq!(b[..2], [0x00, 0x38]);
        assert_eq!(b[2], 0xF0); // value 0: code 0, low nibble 0; value 16: code 31, low nibble 15
        assert_eq!(b[3], 0x0F); // code 63 -> 15; value 17 is code 32 -> 0
        assert_eq!(b[2 + 8], 0x05); // code 37 -> 5; value 24 code 32 -> 0
        assert_eq!(b[2 + 15], 0x10); // code 32 -> 0; value 31 is code 49 -> 1
        assert!(b[2..18].iter().enumerate().all(|(j, &v)| [0, 1, 8, 15].contains(&j) || v == 0));
        // Top bits: k = 0 holds values 0, 8, 16, 24: codes 0, 37, 31, 32 -> 0, 2, 1, 2.
        assert_eq!(b[18], 0b10_01_10_00);
        // k = 1 holds values 1, 9, 17, 25: codes 63, 32, 32, 32 -> 3, 2, 2, 2.
        assert_eq!(b[19], 0b10_10_10_11);
        // k = 7 holds values 7, 15, 23, 31: codes 32, 32, 32, 49 -> 2, 2, 2, 3.
        assert_eq!(b[25], 0b11_10_10_10);
        assert!(b[20..25].iter().all(|&v| v == 0b10_10_10_10));
        assert_eq!(unpack_block(Encoding::Q6, &b), (f16::from_f32(0.5), q));

        let mut q = [0i8; BLOCK];
        (q[0], q[16], q[15]) = (-8, 7, 3);
        let mut b = [0u8; 18];
        pack_block(Encoding::Q4, f16::from_f32(-2.0), &q, &mut b);
        assert_eq!(b[..2], [0x00, 0xC0]);
        assert_eq!(b[2], 0xF0); // codes 0 (value 0) and 15 (value 16)
        assert_eq!(b[17], 0x8B); // codes 11 (value 15) and 8 (value 31)
        assert!(b[3..17].iter().all(|&v| v == 0x88));
        assert_eq!(unpack_block(Encoding::Q4, &b), (f16::from_f32(-2.0), q));
        let mut row = [0f32; 20];
        dequantize_row(Encoding::Q4, &b, &mut row);
        assert_eq!((row[0], row[15], row[16], row[1]), (16.0, -6.0, -14.0, -0.0));
    }

    #[test]
    fn every_value_round_trips_and_padding_is_zero() {
        for enc in [Encoding::Q6, Encoding::Q4] {
            let (lo, hi) = q_range(enc);
            let q: Vec<i8> =
                (0..BLOCK as i32).map(|i| (lo as i32 + i * 7 % (hi as i32 - lo as i32 + 1)) as i8).collect();
            let mut b = vec![0u8; block_bytes(enc)];
            for n in [BLOCK, 20, 1] {
                pack_block(enc, f16::ONE, &q[..n], &mut b);
                let (_, got) = unpack_block(enc, &b);
                assert_eq!(&got[..n], &q[..n], "{}", enc.name());
                assert!(got[n..].iter().all(|&v| v == 0));
            }
        }
    }

    #[test]
    fn sizes_and_bad_scales() {
        assert_eq!((row_bytes(Encoding::Q6, 2560), row_bytes(Encoding::Q4, 2560)), (80 * 26, 80 * 18));
        assert_eq!(row_bytes(Encoding::Q4, 33), 36);
        let mut data = vec![0u8; 3 * row_bytes(Encoding::Q4, 40)];
        assert_eq!(first_bad_scale(Encoding::Q4, &data, 40), None);
        // Row 2, block 1: an f16 infinity (0x7C00).
        data[5 * 18..5 * 18 + 2].copy_from_slice(&[0x00, 0x7C]);
        assert_eq!(first_bad_scale(Encoding::Q4, &data, 40), Some((2, 1)));
    }
}
