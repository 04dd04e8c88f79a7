//! The encodings of the embedding / output matrix (`--output-type`) and the block
//! quantization of the compact ones (q6, q4: SPEC.md §6, `tern_format::block_quant`).
//!
//! **The rule.** Each block of 32 values gets the f16 scale `d`, from a few candidates, whose
//! integers `q = clamp(round_half_even(v / d), lo, hi)` leave the least squared error
//! `Σ (v − d·q)²`, the error measured with `d` as stored (rounded to f16). The candidates map
//! the block's value of largest magnitude `m` to `−t` for `t` from `Q − 1.5` to `Q + 0.5` in
//! steps of 0.25 (`Q` = 32 for q6, 8 for q4), so `m` lands on or near the end of the range that
//! has one more level (−Q), and each candidate is refined once by the least-squares scale of its
//! own integers, `Σ v·q / Σ q²`. Plain absmax (`d = m/(−Q)`, `t = Q`) is one of the candidates,
//! so the search is never worse than it; it is better where the largest value is an outlier,
//! which at 4 bits costs the rest of the block most of its levels. Deterministic (a fixed
//! candidate order, the first of equal errors wins).

use anyhow::{bail, Result};
use half::f16;
use rayon::prelude::*;
use tern_format::block_quant::{self, block_bytes, pack_block, q_range, BLOCK};
use tern_format::Encoding;

/// The `--output-type` names and the encodings they stand for.
pub const OUTPUT_TYPES: [(&str, Encoding); 5] =
    [("f16", Encoding::F16), ("f32", Encoding::F32), ("q8", Encoding::Q8), ("q6", Encoding::Q6), ("q4", Encoding::Q4)];

/// The encoding an `--output-type` name stands for; the error lists the names.
pub fn output_type(name: &str) -> Result<Encoding> {
    match OUTPUT_TYPES.iter().find(|(n, _)| *n == name) {
        Some(&(_, e)) => Ok(e),
        None => {
            let names: Vec<_> = OUTPUT_TYPES.iter().map(|(n, _)| format!("{n:?}")).collect();
            bail!("output type {name:?} is not one of {}", names.join(", "))
        }
    }
}

/// The q6/q4 bytes of a matrix of `cols`-wide rows (`values` finite, checked by the caller);
/// `hf` names the tensor in errors.
pub fn quantize_blocks(encoding: Encoding, values: &[f32], cols: usize, hf: &str) -> Result<Vec<u8>> {
    let rb = block_quant::row_bytes(encoding, cols);
    let mut out = vec![0u8; values.len() / cols * rb];
    let bad = out.par_chunks_mut(rb).zip(values.par_chunks(cols)).enumerate().find_map_first(|(r, (out, row))| {
        for (b, (out, vals)) in out.chunks_mut(block_bytes(encoding)).zip(row.chunks(BLOCK)).enumerate() {
            let mut q = [0i8; BLOCK];
            let Some(d) = block_scale(encoding, vals, &mut q[..vals.len()]) else { return Some((r, b)) };
            pack_block(encoding, d, &q[..vals.len()], out);
        }
        None
    });
    if let Some((r, b)) = bad {
        bail!(
            "tensor {hf}: row {r}, block {b} has values too large for an f16 {} scale; use --output-type f32",
            encoding.name()
        );
    }
    Ok(out)
}

/// The scale of one block by the module's rule, with its integers in `q`; `None` when the
/// block's scale does not fit f16.
pub fn block_scale(encoding: Encoding, vals: &[f32], q: &mut [i8]) -> Option<f16> {
    let (lo, hi) = q_range(encoding);
    let m = vals.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if m == 0.0 {
        q.fill(0);
        return Some(f16::ZERO);
    }
    let round = |d: f16, q: &mut [i8]| -> f64 {
        let df = d.to_f32();
        let mut err = 0.0f64;
        for (q, &v) in q.iter_mut().zip(vals) {
            let i = if df == 0.0 { 0.0 } else { (v / df).round_ties_even().clamp(lo.into(), hi.into()) };
            *q = i as i8;
            err += f64::from(v - df * i).powi(2);
        }
        err
    };
    let big = -f32::from(lo);
    let mut best: Option<(f64, f16)> = None;
    let mut trial = [0i8; BLOCK];
    let trial = &mut trial[..vals.len()];
    for step in 0..9 {
        let t = big - 1.5 + 0.25 * step as f32;
        let d = f16::from_f32(-m / t);
        if !d.is_finite() {
            return None;
        }
        let err = round(d, trial);
        let (num, den) = trial.iter().zip(vals).fold((0.0f64, 0.0f64), |(n, s), (&q, &v)| {
            (n + f64::from(v) * f64::from(q), s + f64::from(q) * f64::from(q))
        });
        let mut cands = [(err, d), (f64::INFINITY, d)];
        if den > 0.0 {
            let refined = f16::from_f64(num / den);
            if refined.is_finite() {
                cands[1] = (round(refined, trial), refined);
            }
        }
        for (err, d) in cands {
            if best.is_none_or(|(b, _)| err < b) {
                best = Some((err, d));
            }
        }
    }
    let (_, d) = best.expect("nine candidates");
    round(d, q);
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block with one outlier: the search beats absmax at 4 bits; every block's values
    /// come back within half a step of its scale, and never worse than absmax.
    #[test]
    fn search_is_never_worse_than_absmax() {
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for enc in [Encoding::Q6, Encoding::Q4] {
            let (lo, hi) = q_range(enc);
            for trial in 0..200 {
                let mut vals: Vec<f32> = (0..BLOCK).map(|_| rnd() * 0.1).collect();
                if trial % 2 == 0 {
                    vals[trial % BLOCK] = 0.4;
                }
                let mut q = [0i8; BLOCK];
                let d = block_scale(enc, &vals, &mut q).unwrap().to_f32();
                let err: f32 = vals.iter().zip(&q).map(|(&v, &q)| (v - d * f32::from(q)).powi(2)).sum();
                let d0 = f16::from_f32(
                    -vals.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m }) / -f32::from(lo),
                )
                .to_f32();
                let err0: f32 = vals
                    .iter()
                    .map(|&v| (v - d0 * (v / d0).round_ties_even().clamp(lo.into(), hi.into())).powi(2))
                    .sum();
                assert!(err <= err0 * 1.000_001, "{} trial {trial}: {err} > absmax {err0}", enc.name());
                assert!(q.iter().all(|&v| (lo..=hi).contains(&v)));
            }
        }
        // An exact grid comes back exactly: values k/8 for k in -8..=7 at q4.
        let vals: Vec<f32> = (0..BLOCK).map(|i| ((i % 16) as f32 - 8.0) / 8.0).collect();
        let mut q = [0i8; BLOCK];
        let d = block_scale(Encoding::Q4, &vals, &mut q).unwrap();
        assert_eq!(d.to_f32(), 0.125);
        assert!(vals.iter().zip(&q).all(|(&v, &q)| v == 0.125 * f32::from(q)));
        // All zeros: scale 0; a huge block: no f16 scale.
        assert_eq!(block_scale(Encoding::Q6, &[0.0; 5], &mut q[..5]), Some(f16::ZERO));
        assert_eq!(block_scale(Encoding::Q6, &[1e9, 1.0], &mut q[..2]), None);
    }

    #[test]
    fn names() {
        assert_eq!(output_type("q6").unwrap(), Encoding::Q6);
        let err = output_type("int4").unwrap_err().to_string();
        assert_eq!(err, r#"output type "int4" is not one of "f16", "f32", "q8", "q6", "q4""#);
    }
}
