//! bitnet.cpp's I2_S tensors -> tern's `t2` rows, and llama.cpp's q/k row permutation undone.
//!
//! I2_S, as checked in microsoft/BitNet `src/ggml-bitnet-mad.cpp` (`quantize_i2_s`, the
//! `ACT_PARALLEL` branch that `include/gemm-config.h` defines by default) and
//! `utils/convert-hf-to-gguf-bitnet.py` (`quantize_to_i2_s`), and in ik_llama.cpp
//! `ggml/src/iqk/iqk_quantize.cpp` (`dequantize_row_ms_i2s`): the n weights of a tensor run
//! row-major (GGUF ne0 = the row length) in blocks of 128 -> 32 bytes; byte k of a block holds
//! elements k, k+32, k+64, k+96 at bit shifts 6, 4, 2, 0; the code is `w + 1` (0, 1, 2 for
//! -1, 0, +1). Byte n/4 starts a 32-byte tail whose first 4 bytes are one f32 scale per
//! tensor that multiplies the output (`dequantize_row_ms_i2s`: `y = d * (code - 1)`).
//! Code 3 (which those kernels would read as +2) is not a ternary weight: refused.

use anyhow::{bail, Result};
use rayon::prelude::*;
use tern_format::ternary::{pack_row, row_bytes};

/// Weights per I2_S block, and bytes per block.
const BLOCK: usize = 128;
const BLOCK_BYTES: usize = BLOCK / 4;

/// The code of element `i` of an I2_S payload.
#[inline]
fn code(data: &[u8], i: usize) -> u8 {
    let (block, k) = (i / BLOCK, i % BLOCK);
    (data[block * BLOCK_BYTES + k % BLOCK_BYTES] >> (6 - 2 * (k / BLOCK_BYTES))) & 0b11
}

/// A decoded I2_S matrix: `t2` rows, the tensor's scale, and its count of zero weights.
pub struct Decoded {
    pub t2: Vec<u8>,
    pub scale: f32,
    pub zeros: u64,
}

/// Decodes the I2_S payload `data` (n/4 + 32 bytes) of the matrix `[rows, cols]` named
/// `name`. `row_of(r)` gives the I2_S row that holds output row `r` (identity, or the
/// inverse of llama.cpp's q/k permutation).
pub fn decode(
    name: &str,
    data: &[u8],
    rows: usize,
    cols: usize,
    row_of: &(dyn Fn(usize) -> usize + Sync),
) -> Result<Decoded> {
    let n = rows * cols;
    if !n.is_multiple_of(BLOCK) {
        bail!(
            "tensor {name}: I2_S with {n} weights, not a multiple of {BLOCK}: bitnet.cpp's x86 layout packs whole \
             128-weight blocks (convert from the Hugging Face checkpoint instead)"
        );
    }
    if data.len() != n / 4 + 32 {
        bail!("tensor {name}: I2_S data of {} bytes, expected n/4 + 32 = {} for {n} weights", data.len(), n / 4 + 32);
    }
    let scale = f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().expect("4 bytes"));
    if !(scale.is_finite() && scale > 0.0) {
        bail!("tensor {name}: I2_S scale {scale} (the f32 at byte {}) is not a positive number", n / 4);
    }
    let rb = row_bytes(cols);
    let mut t2 = vec![0u8; rows * rb];
    let results: Vec<Result<u64, (usize, usize)>> = t2
        .par_chunks_mut(rb)
        .enumerate()
        .map_init(
            || vec![0i8; cols],
            |w, (r, out)| {
                let src = row_of(r) * cols;
                for (c, w) in w.iter_mut().enumerate() {
                    match code(data, src + c) {
                        3 => return Err((r, c)),
                        k => *w = k as i8 - 1,
                    }
                }
                pack_row(w, out);
                Ok(w.iter().filter(|&&v| v == 0).count() as u64)
            },
        )
        .collect();
    let mut zeros = 0;
    for res in results {
        match res {
            Ok(z) => zeros += z,
            Err((r, c)) => bail!("tensor {name}: code 3 (not a ternary weight) at row {r} column {c}"),
        }
    }
    Ok(Decoded { t2, scale, zeros })
}

/// The I2_S row holding output row `r` of a q or k projection that llama.cpp's converter
/// permuted for its interleaved ("normal") RoPE. `convert_hf_to_gguf.py`,
/// `LlamaModel.permute`: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`, so GGUF
/// row `h·d + 2i + t` holds Hugging Face row `h·d + t·d/2 + i` (d = head dim, t in {0, 1}).
pub fn unpermuted_row(r: usize, head_dim: usize) -> usize {
    let (h, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let (t, i) = (within / half, within % half);
    h * head_dim + 2 * i + t
}

/// Encodes ternary rows as I2_S (the inverse of [`decode`], for tests).
#[cfg(test)]
pub fn encode(w: &[i8], scale: f32) -> Vec<u8> {
    let n = w.len();
    let mut out = vec![0u8; n / 4 + 32];
    for (i, &v) in w.iter().enumerate() {
        let (block, k) = (i / BLOCK, i % BLOCK);
        out[block * BLOCK_BYTES + k % BLOCK_BYTES] |= ((v + 1) as u8) << (6 - 2 * (k / BLOCK_BYTES));
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_format::ternary::unpack_row;

    fn unpack(t2: &[u8], rows: usize, cols: usize) -> Vec<i8> {
        let rb = row_bytes(cols);
        let mut out = vec![0i8; rows * cols];
        for (r, row) in out.chunks_mut(cols).enumerate() {
            unpack_row(&t2[r * rb..(r + 1) * rb], row).unwrap();
        }
        out
    }

    /// bitnet.cpp's block layout, by hand: byte 0 of a block holds elements 0, 32, 64, 96 at
    /// shifts 6, 4, 2, 0.
    #[test]
    fn block_layout_by_hand() {
        let (rows, cols) = (2, 64); // 128 weights: one block crossing a row boundary
        let mut data = vec![0b0101_0101u8; 32 + 32];
        data[0] = 0b10_00_01_10; // elements 0 (+1), 32 (-1), 64 (0), 96 (+1)
        data[32..36].copy_from_slice(&0.5f32.to_le_bytes());
        let d = decode("t", &data, rows, cols, &|r| r).unwrap();
        let w = unpack(&d.t2, rows, cols);
        assert_eq!((w[0], w[32], w[64], w[96]), (1, -1, 0, 1));
        assert_eq!(w.iter().filter(|&&v| v != 0).count(), 3);
        assert_eq!((d.scale, d.zeros), (0.5, 125));
    }

    #[test]
    fn round_trips_odd_shapes() {
        let (rows, cols) = (12, 160);
        let w: Vec<i8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
        let d = decode("t", &encode(&w, 0.25), rows, cols, &|r| r).unwrap();
        assert_eq!(unpack(&d.t2, rows, cols), w);
    }

    #[test]
    fn refusals_name_the_tensor() {
        let w = vec![0i8; 256];
        let mut bad = encode(&w, 1.0);
        bad[5] |= 0b11 << 4;
        let err = decode("blk.0.attn_q", &bad, 2, 128, &|r| r).err().unwrap().to_string();
        assert!(err.contains("blk.0.attn_q: code 3") && err.contains("row 0 column 37"), "{err}");
        let err = decode("x", &encode(&w, 0.0), 2, 128, &|r| r).err().unwrap().to_string();
        assert!(err.contains("scale 0 (the f32 at byte 64) is not a positive"), "{err}");
        let err = decode("x", &encode(&w, 1.0)[..90], 2, 128, &|r| r).err().unwrap().to_string();
        assert!(err.contains("90 bytes, expected n/4 + 32 = 96"), "{err}");
        let err = decode("x", &[0u8; 24 + 32], 1, 96, &|r| r).err().unwrap().to_string();
        assert!(err.contains("96 weights, not a multiple of 128"), "{err}");
    }

    /// llama.cpp's `permute` (reshape(n_head, 2, d/2, cols).swapaxes(1, 2)), written out,
    /// then undone by `unpermuted_row`.
    #[test]
    fn permutation_is_undone() {
        let (n_head, d) = (3, 8);
        let hf: Vec<usize> = (0..n_head * d).collect();
        let mut gguf = vec![0; hf.len()];
        for h in 0..n_head {
            for t in 0..2 {
                for i in 0..d / 2 {
                    gguf[h * d + i * 2 + t] = hf[h * d + t * d / 2 + i];
                }
            }
        }
        assert_eq!(&gguf[..8], &[0, 4, 1, 5, 2, 6, 3, 7]);
        let back: Vec<usize> = (0..hf.len()).map(|r| gguf[unpermuted_row(r, d)]).collect();
        assert_eq!(back, hf);
    }
}
