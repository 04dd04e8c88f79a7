//! Hugging Face's packed ternary weights (`quant_method: "bitnet"`) -> tern's `t2` rows.
//!
//! The layout, as transformers defines it (`integrations/bitnet.py`, `pack_weights` and
//! `unpack_weights`, checked there): a ternary matrix [out, in] is stored as U8
//! [out/4, in]; byte [r, c] holds in bits 2i..2i+1 (i = 0..3) the code of output row
//! `i·(out/4) + r`, column c, and the code is `w + 1` (0, 1, 2 for -1, 0, +1). Four values
//! per byte along dimension 0, not along the row as in `t2`, so every row is gathered from
//! one bit pair of `out/4`-row slices. Code 3 would unpack to 2, not a ternary weight: refused.

use rayon::prelude::*;
use tern_format::ternary::{pack_row, row_bytes};

/// Rows of the packed tensor of a matrix with `rows` output rows: `rows / 4`, as
/// transformers' `BitLinear` registers its buffer (`out_features // 4`). `None` when
/// `rows` is not a multiple of 4 (such a matrix has no packed form transformers loads).
pub fn packed_rows(rows: usize) -> Option<usize> {
    rows.is_multiple_of(4).then_some(rows / 4)
}

/// The first invalid code (3) of a packed tensor, by the unpacked row and column it encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCode {
    pub row: usize,
    pub col: usize,
}

/// The 2-bit code (`w + 1`) of row `row`, column `col`, of a matrix `[rows, cols]`
/// packed as [rows/4, cols].
#[inline]
fn code(packed: &[u8], rows: usize, cols: usize, row: usize, col: usize) -> u8 {
    let block = rows / 4;
    (packed[(row % block) * cols + col] >> (2 * (row / block))) & 0b11
}

/// Packs a ternary matrix [rows, cols] (row-major, `rows` a multiple of 4) as
/// `pack_weights` does: the inverse of [`unpack`], for tests and tools that write
/// checkpoints in this layout.
pub fn pack(w: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(4) && w.len() == rows * cols, "matrix shape");
    let block = rows / 4;
    let mut out = vec![0u8; block * cols];
    for (i, &v) in w.iter().enumerate() {
        assert!((-1..=1).contains(&v), "weight {v} is not ternary");
        let (row, col) = (i / cols, i % cols);
        out[(row % block) * cols + col] |= ((v + 1) as u8) << (2 * (row / block));
    }
    out
}

/// Unpacks to one i8 per weight, row-major [rows, cols] (tests and tools).
pub fn unpack(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, InvalidCode> {
    assert_eq!(packed.len() * 4, rows * cols, "packed tensor length");
    let mut out = vec![0i8; rows * cols];
    for (row, w) in out.chunks_mut(cols).enumerate() {
        for (col, w) in w.iter_mut().enumerate() {
            match code(packed, rows, cols, row, col) {
                3 => return Err(InvalidCode { row, col }),
                c => *w = c as i8 - 1,
            }
        }
    }
    Ok(out)
}

/// Repacks a U8 [rows/4, cols] tensor into `t2` rows (SPEC.md §6) without changing a
/// weight; returns the bytes and the number of zero weights. The caller checked the
/// shape: `packed.len() == rows / 4 * cols` with `rows` a multiple of 4.
pub fn to_t2(packed: &[u8], rows: usize, cols: usize) -> Result<(Vec<u8>, u64), InvalidCode> {
    assert!(rows.is_multiple_of(4) && packed.len() * 4 == rows * cols, "packed tensor shape");
    let rb = row_bytes(cols);
    let mut out = vec![0u8; rows * rb];
    let zeros = out
        .par_chunks_mut(rb)
        .enumerate()
        .map_init(
            || vec![0i8; cols],
            |w, (row, dst)| {
                for (col, w) in w.iter_mut().enumerate() {
                    match code(packed, rows, cols, row, col) {
                        3 => return Err(InvalidCode { row, col }),
                        c => *w = c as i8 - 1,
                    }
                }
                pack_row(w, dst);
                Ok(w.iter().filter(|&&v| v == 0).count() as u64)
            },
        )
        .try_reduce(|| 0, |a, b| Ok(a + b));
    // Rayon may stop at any failing row; report the first one in row order.
    match zeros {
        Ok(z) => Ok((out, z)),
        Err(_) => Err(unpack(packed, rows, cols).expect_err("a row failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_format::ternary::unpack_row;

    /// The worked example of transformers' `unpack_weights` docstring
    /// (`integrations/bitnet.py`): two packed bytes per row, eight unpacked rows.
    #[test]
    fn transformers_docstring_example() {
        let packed = [0b1010_0001u8, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let want: [[i8; 2]; 8] = [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]];
        assert_eq!(unpack(&packed, 8, 2).unwrap(), want.concat());
        assert_eq!(pack(&want.concat(), 8, 2), packed);
        let (t2, zeros) = to_t2(&packed, 8, 2).unwrap();
        assert_eq!(zeros, 3);
        for (r, w) in want.iter().enumerate() {
            let mut row = [9i8; 2];
            unpack_row(&t2[r * 64..(r + 1) * 64], &mut row).unwrap();
            assert_eq!(&row, w, "row {r}");
        }
    }

    #[test]
    fn round_trip_at_odd_sizes() {
        for (rows, cols) in [(4, 1), (8, 3), (12, 257), (160, 320), (320, 864)] {
            let w: Vec<i8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
            let packed = pack(&w, rows, cols);
            assert_eq!(unpack(&packed, rows, cols).unwrap(), w, "{rows}x{cols}");
            let (t2, zeros) = to_t2(&packed, rows, cols).unwrap();
            assert_eq!(zeros, w.iter().filter(|&&v| v == 0).count() as u64);
            let rb = row_bytes(cols);
            for (r, want) in w.chunks(cols).enumerate() {
                let mut row = vec![9i8; cols];
                unpack_row(&t2[r * rb..(r + 1) * rb], &mut row).unwrap();
                assert_eq!(row, want, "{rows}x{cols} row {r}");
            }
        }
        assert_eq!((packed_rows(864), packed_rows(6)), (Some(216), None));
    }

    #[test]
    fn code_3_is_reported_at_its_row_and_column() {
        let rows = 8;
        let mut packed = pack(&[0i8; 8 * 5], rows, 5);
        packed[5 + 3] |= 0b11 << 6; // byte [1, 3], bit pair 3: row 3·2 + 1 = 7, column 3
        packed[5 + 4] |= 0b11 << 2; // byte [1, 4], bit pair 1: row 3, column 4 (the first)
        assert_eq!(unpack(&packed, rows, 5), Err(InvalidCode { row: 3, col: 4 }));
        assert_eq!(to_t2(&packed, rows, 5).unwrap_err(), InvalidCode { row: 3, col: 4 });
    }
}
