//! The `T2` encoding: ternary weights at 2 bits each, in 256-weight blocks of 64 bytes.
//!
//! A matrix `[rows, cols]` (`rows` outputs, `cols` inputs) is stored row by row. Each row
//! is padded with zero weights to a multiple of [`BLOCK`] columns and split into blocks.
//! In a block, byte `j` (0..64) holds the weights of columns `j`, `j+64`, `j+128` and
//! `j+192` of that block in bit pairs 0-1, 2-3, 4-5 and 6-7. Each weight `w` in
//! {-1, 0, +1} is stored as the unsigned code `w + 1` in {0, 1, 2}; code 3 is invalid.
//!
//! Why this layout: one 64-byte load, shifted right by 0, 2, 4 or 6 and masked with 3,
//! yields the codes of 64 *consecutive* columns, which line up with 64 consecutive int8
//! activations for `vpdpbusd` (unsigned code x signed activation). Subtracting the
//! activation sum once turns `sum((w+1) x)` back into `sum(w x)`.

/// Weights per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = BLOCK / 4;

/// Columns of a row after padding to whole blocks.
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK
}

/// Bytes of one packed row of `cols` weights.
pub fn row_bytes(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK_BYTES
}

/// Packs one row of ternary weights (each -1, 0 or +1) into `out`
/// (`row_bytes(row.len())` bytes). Padding columns get weight 0 (code 1).
///
/// # Panics
/// If `out` has the wrong length or a weight is not ternary: both are the caller's bugs.
pub fn pack_row(row: &[i8], out: &mut [u8]) {
    assert_eq!(out.len(), row_bytes(row.len()), "packed row length");
    // Code 1 (weight 0) in every bit pair.
    out.fill(0b0101_0101);
    for (col, &w) in row.iter().enumerate() {
        assert!((-1..=1).contains(&w), "weight {w} at column {col} is not ternary");
        let (byte, shift) = locate(col);
        let code = (w + 1) as u8;
        out[byte] = (out[byte] & !(0b11 << shift)) | (code << shift);
    }
}

/// Unpacks `row.len()` weights from one packed row. Returns `Err(column)` at the first
/// invalid code (3), so a reader never turns corrupt bits into a weight silently.
pub fn unpack_row(packed: &[u8], row: &mut [i8]) -> Result<(), usize> {
    assert_eq!(packed.len(), row_bytes(row.len()), "packed row length");
    for (col, w) in row.iter_mut().enumerate() {
        let (byte, shift) = locate(col);
        let code = (packed[byte] >> shift) & 0b11;
        if code == 3 {
            return Err(col);
        }
        *w = code as i8 - 1;
    }
    Ok(())
}

/// Byte index and bit shift of column `col` within a packed row.
#[inline]
pub fn locate(col: usize) -> (usize, u32) {
    let block = col / BLOCK;
    let within = col % BLOCK;
    (block * BLOCK_BYTES + within % BLOCK_BYTES, 2 * (within / BLOCK_BYTES) as u32)
}

/// Rounds half to even, as `torch.round` does.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// The per-tensor scale of a BitLinear weight: `max(mean(|W|), 1e-5)`.
///
/// This is the only scale convention of the format: `W ≈ scale × Wq`, so
/// `s_w = 1 / scale` in the notation of the BitNet b1.58 reference code.
/// The mean is accumulated in f64 and rounded once to f32.
pub fn absmean_scale(weights: &[f32]) -> f32 {
    let sum: f64 = weights.iter().map(|&w| f64::from(w.abs())).sum();
    let mean = if weights.is_empty() { 0.0 } else { (sum / weights.len() as f64) as f32 };
    mean.max(1e-5)
}

/// Ternarizes weights exactly as BitLinear does:
/// `Wq = clamp(round_half_even(W × s_w), -1, 1)` with `s_w = 1 / scale` computed in f32.
pub fn ternarize(weights: &[f32], scale: f32, out: &mut [i8]) {
    let s_w = 1.0f32 / scale;
    for (o, &w) in out.iter_mut().zip(weights) {
        *o = round_half_even(w * s_w).clamp(-1.0, 1.0) as i8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_spec() {
        // Columns 0, 64, 128, 192 = -1, 0, +1, 0 -> codes 0, 1, 2, 1 -> byte 0 = 0b01_10_01_00.
        let mut row = [0i8; 256];
        row[0] = -1;
        row[128] = 1;
        row[1] = 1; // column 1 -> byte 1, bits 0-1
        row[255] = -1; // column 255 = 192 + 63 -> byte 63, bits 6-7
        let mut out = [0u8; 64];
        pack_row(&row, &mut out);
        assert_eq!(out[0], 0b0110_0100);
        assert_eq!(out[1], 0b0101_0110);
        assert_eq!(out[63], 0b0001_0101);
        assert_eq!(out[2], 0x55);
    }

    #[test]
    fn pack_unpack_roundtrip_any_length() {
        for cols in [1usize, 2, 63, 64, 65, 255, 256, 257, 511, 600, 1000] {
            let row: Vec<i8> = (0..cols).map(|i| ((i * 7 + cols) % 3) as i8 - 1).collect();
            let mut packed = vec![0u8; row_bytes(cols)];
            pack_row(&row, &mut packed);
            let mut back = vec![9i8; cols];
            unpack_row(&packed, &mut back).unwrap();
            assert_eq!(row, back, "cols {cols}");
            // Padding columns decode as zero weights.
            let mut padded = vec![9i8; padded_cols(cols)];
            unpack_row(&packed, &mut padded).unwrap();
            assert!(padded[cols..].iter().all(|&w| w == 0));
        }
    }

    #[test]
    fn invalid_code_is_reported() {
        let mut packed = [0x55u8; 64];
        packed[5] = 0b0111_0101; // bits 4-5 = code 3: column 128 + 5
        let mut row = [0i8; 256];
        assert_eq!(unpack_row(&packed, &mut row), Err(133));
    }

    #[test]
    fn ternarize_rounds_half_to_even_and_clamps() {
        // scale 2 -> s_w 0.5: W = 1 -> 0.5 -> 0 (even); W = 3 -> 1.5 -> 2 -> clamp 1;
        // W = -1 -> -0.5 -> -0; W = -1.2 -> -0.6 -> -1.
        let w = [1.0f32, 3.0, -1.0, -1.2, 0.0, 100.0];
        let mut q = [0i8; 6];
        ternarize(&w, 2.0, &mut q);
        assert_eq!(q, [0, 1, 0, -1, 0, 1]);
        assert_eq!(absmean_scale(&[1.0, -3.0]), 2.0);
        assert_eq!(absmean_scale(&[0.0; 4]), 1e-5);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-3.5), -4.0);
    }
}
