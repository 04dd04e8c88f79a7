//! Every kernel set this CPU runs against the definition: exact integer dot products of
//! unpacked ternary weights with int8 activations, on random and edge-case inputs.

use proptest::prelude::*;
use tern::kernels::Kernels;
use tern::matmul;
use tern_format::ternary::{pack_row, padded_cols, row_bytes};

/// Packs `rows` ternary rows of `cols` weights.
fn pack(w: &[Vec<i8>], cols: usize) -> Vec<u8> {
    let rb = row_bytes(cols);
    let mut out = vec![0u8; w.len() * rb];
    for (row, o) in w.iter().zip(out.chunks_mut(rb)) {
        pack_row(row, o);
    }
    out
}

/// Activations padded with zeros to whole blocks, as the model lays them out.
fn pad(x: &[Vec<i8>], cols: usize) -> (Vec<i8>, Vec<i32>) {
    let pc = padded_cols(cols);
    let mut out = vec![0i8; x.len() * pc];
    for (t, xt) in x.iter().enumerate() {
        out[t * pc..t * pc + cols].copy_from_slice(xt);
    }
    (out, x.iter().map(|xt| xt.iter().map(|&v| i32::from(v)).sum()).collect())
}

/// The definition, token-major: `out[t * n_rows + r] = sum_k w[r][k] * x[t][k]`.
fn naive(w: &[Vec<i8>], x: &[Vec<i8>]) -> Vec<i32> {
    let mut out = Vec::new();
    for xt in x {
        for row in w {
            out.push(row.iter().zip(xt).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum());
        }
    }
    out
}

fn check_all(w: &[Vec<i8>], x: &[Vec<i8>], cols: usize) {
    let packed = pack(w, cols);
    let (xq, sums) = pad(x, cols);
    let want = naive(w, x);
    for k in Kernels::available() {
        let mut got = vec![0i32; w.len() * x.len()];
        k.ternary_band(&packed, row_bytes(cols), &xq, &sums, &mut got);
        assert_eq!(got, want, "kernel {} (cols {cols}, rows {}, tokens {})", k.name(), w.len(), x.len());
        // The parallel driver splits rows into bands, each token-major: same values.
        let mut par = vec![0i32; w.len() * x.len()];
        matmul::ternary_gemm(&k, &packed, row_bytes(cols), &xq, &sums, &mut par);
        let by_token: Vec<i32> = (0..x.len())
            .flat_map(|t| matmul::token_outputs(&par, row_bytes(cols), w.len(), x.len(), t).flatten().copied())
            .collect();
        assert_eq!(by_token, want, "kernel {} through the parallel driver", k.name());
    }
}

fn ternary() -> impl Strategy<Value = i8> {
    -1i8..=1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_matrices((cols, w, x) in (1usize..1100, 1usize..7, 1usize..10).prop_flat_map(|(cols, rows, toks)| (
        Just(cols),
        proptest::collection::vec(proptest::collection::vec(ternary(), cols), rows),
        proptest::collection::vec(proptest::collection::vec(any::<i8>(), cols), toks),
    ))) {
        check_all(&w, &x, cols);
    }
}

#[test]
fn every_padding_length() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for cols in 1..=520 {
        let w: Vec<Vec<i8>> = (0..3).map(|_| (0..cols).map(|_| (next() % 3) as i8 - 1).collect()).collect();
        let x: Vec<Vec<i8>> = (0..5).map(|_| (0..cols).map(|_| next() as i8).collect()).collect();
        check_all(&w, &x, cols);
    }
}

#[test]
fn extremes_do_not_overflow() {
    // The largest sums a kernel can meet: |x| = 128 against all-±1 rows, long rows.
    for cols in [256, 4096, 8640, 16384] {
        // Five rows: the AVX-512 kernel's 4 × 4 tile and its one-row remainder both meet them.
        let w = vec![vec![1i8; cols], vec![-1i8; cols], vec![0i8; cols], vec![-1i8; cols], vec![1i8; cols]];
        let x = vec![vec![-128i8; cols], vec![127i8; cols], vec![0i8; cols], vec![-128i8; cols], vec![-128i8; cols]];
        check_all(&w, &x, cols);
    }
    // Every tile shape of the AVX-512 GEMM (8 × 2, 4 × 4, 4 × 3, their 4- and 1-row
    // remainders) at the extremes: 13 rows, 1 to 9 tokens.
    for cols in [4096, 16384] {
        let w: Vec<Vec<i8>> = (0..13).map(|r| vec![[1i8, -1, 1, -1, 0][r % 5]; cols]).collect();
        for n in 1..=9 {
            let x: Vec<Vec<i8>> = (0..n).map(|t| vec![[-128i8, 127, -128, 0][t % 4]; cols]).collect();
            check_all(&w, &x, cols);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Each kernel set's band against the portable kernel, over token counts that take every
    /// group and tile shape (groups of four, then three, two or one token) and row counts
    /// that leave every remainder of the tiles.
    #[test]
    fn bands_match_the_portable_kernel(
        (cols, rows, toks, seed) in (prop_oneof![1usize..300, Just(1536), Just(2048), 1500usize..1600], 1usize..40, 1usize..=18, any::<u64>())
    ) {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let w: Vec<Vec<i8>> = (0..rows).map(|_| (0..cols).map(|_| (next() % 3) as i8 - 1).collect()).collect();
        let x: Vec<Vec<i8>> = (0..toks).map(|_| (0..cols).map(|_| next() as i8).collect()).collect();
        let (packed, (xq, sums)) = (pack(&w, cols), pad(&x, cols));
        let mut want = vec![0i32; rows * toks];
        tern::kernels::portable::ternary_gemm(&packed, row_bytes(cols), &xq, &sums, &mut want);
        for k in Kernels::available() {
            let mut got = vec![0i32; rows * toks];
            k.ternary_band(&packed, row_bytes(cols), &xq, &sums, &mut got);
            prop_assert_eq!(&got, &want, "kernel {} (cols {}, rows {}, tokens {})", k.name(), cols, rows, toks);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn float_dots_agree(v in proptest::collection::vec((-4.0f32..4.0, -4.0f32..4.0), 0..300)) {
        let x: Vec<f32> = v.iter().map(|p| p.1).collect();
        let f16: Vec<u8> = v.iter().flat_map(|p| half::f16::from_f32(p.0).to_le_bytes()).collect();
        let f32s: Vec<u8> = v.iter().flat_map(|p| p.0.to_le_bytes()).collect();
        let exact = |w: &dyn Fn(usize) -> f64| (0..x.len()).map(|i| w(i) * f64::from(x[i])).sum::<f64>();
        let want16 = exact(&|i| f64::from(half::f16::from_f32(v[i].0).to_f32()));
        let i8s: Vec<u8> = v.iter().map(|p| (p.0 * 30.0) as i8 as u8).collect();
        let want8 = exact(&|i| f64::from(i8s[i] as i8));
        let scale8 = 1.0 + v.iter().map(|p| f64::from((p.0 * 30.0 * p.1).abs())).sum::<f64>();
        let want32 = exact(&|i| f64::from(v[i].0));
        let scale = 1.0 + v.iter().map(|p| f64::from((p.0 * p.1).abs())).sum::<f64>();
        for k in Kernels::available() {
            let e16 = (f64::from(k.dot_f16(&f16, &x)) - want16).abs() / scale;
            let e32 = (f64::from(k.dot_f32(&f32s, &x)) - want32).abs() / scale;
            let e8 = (f64::from(k.dot_i8(&i8s, &x)) - want8).abs() / scale8;
            prop_assert!(e16 < 1e-6 && e32 < 1e-6 && e8 < 1e-6, "kernel {}: {e16:e} {e32:e} {e8:e}", k.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// q6/q4 rows: every kernel set gives the portable kernel's bits, which are the exact
    /// dot product of the dequantized row (f64) to within f32 rounding.
    #[test]
    fn block_quantized_dots_are_the_same_on_every_kernel_set(
        blocks in 1usize..12,
        seed in any::<u32>(),
        scale_exp in -12i32..4,
    ) {
        use tern_format::block_quant::{block_bytes, dequantize_row, pack_block, q_range, BLOCK};
        use tern_format::Encoding;
        let mut s = seed;
        let mut rnd = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let x: Vec<f32> = (0..blocks * BLOCK).map(|_| (rnd() as f32 / (1 << 24) as f32 - 0.5) * 8.0).collect();
        for enc in [Encoding::Q6, Encoding::Q4] {
            let (lo, hi) = q_range(enc);
            let mut row = vec![0u8; blocks * block_bytes(enc)];
            for blk in row.chunks_mut(block_bytes(enc)) {
                let q: Vec<i8> = (0..BLOCK).map(|_| (lo as i32 + (rnd() % (hi as i32 - lo as i32 + 1) as u32) as i32) as i8).collect();
                let d = half::f16::from_f32((rnd() as f32 / (1 << 24) as f32 - 0.5) * 2f32.powi(scale_exp));
                pack_block(enc, d, &q, blk);
            }
            let mut w = vec![0f32; blocks * BLOCK];
            dequantize_row(enc, &row, &mut w);
            let want: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let size: f64 = 1e-30 + w.iter().zip(&x).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum::<f64>();
            let dot = |k: &Kernels| if enc == Encoding::Q6 { k.dot_q6(&row, &x) } else { k.dot_q4(&row, &x) };
            let portable = dot(&Kernels::portable());
            prop_assert!((f64::from(portable) - want).abs() / size < 1e-6, "{}: {portable} vs {want}", enc.name());
            for k in Kernels::available() {
                let got = dot(&k);
                prop_assert_eq!(got.to_bits(), portable.to_bits(), "kernel {} {}: {} vs {}", k.name(), enc.name(), got, portable);
            }
        }
    }
}

#[test]
fn this_cpu_gets_simd_kernels() {
    // The CI machines have AVX-512 VNNI; elsewhere this only lists what was found.
    let names: Vec<_> = Kernels::available().iter().map(|k| k.name()).collect();
    eprintln!("kernels: {names:?}, chosen: {}", Kernels::detect().name());
    assert_eq!(names.last(), Some(&"portable"));
    // NEON is part of the aarch64 baseline: there the plain NEON set is always offered.
    #[cfg(target_arch = "aarch64")]
    assert!(names.contains(&"neon"), "{names:?}");
    // Each x86 set is offered wherever its features are (so the tests here run every one
    // this CPU has, GFNI's and AVX-VNNI's included).
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    #[cfg(target_arch = "x86_64")]
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    #[cfg(target_arch = "x86_64")]
    for (name, has) in [
        ("avx512-gfni", avx512 && is_x86_feature_detected!("gfni")),
        ("avx512", avx512),
        ("avxvnni", avx2 && is_x86_feature_detected!("avxvnni")),
        ("avx2", avx2),
    ] {
        assert!(!has || names.contains(&name), "{name} missing from {names:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// The bandwidth probe's read loops all compute the definition (every length, so every
    /// tail), so none of them can skip or re-read bytes.
    #[test]
    fn read_sums_agree(bytes in proptest::collection::vec(any::<u8>(), 0..2000), skip in 0usize..8) {
        let b = &bytes[skip.min(bytes.len())..];
        let words = b.chunks_exact(8);
        let want = words.remainder().iter().fold(0u64, |a, &x| a.wrapping_add(u64::from(x)))
            .wrapping_add(words.fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))));
        for k in Kernels::available() {
            prop_assert_eq!(k.read_sum(b), want, "kernel {}", k.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// Attention (decode and prompt kernels) over an f32 or an f16 cache gives the same bits
    /// on every kernel set (each
    /// widens f16 its own way: with `vcvtph2ps`, or in plain code), for any shape: head
    /// widths that are and are not multiples of 16 and 32, grouped heads, every tail of
    /// positions, every run of heads.
    #[test]
    fn attention_is_the_same_on_every_kernel_set(
        (hd, kv_heads, group, n, first, count, seed) in (
            prop_oneof![Just(16usize), Just(24), Just(32), Just(40), Just(64), Just(96)],
            1usize..4, 1usize..4, prop_oneof![1usize..70, 250usize..600],
        ).prop_flat_map(|(hd, kv, g, n)| (
            Just(hd), Just(kv), Just(g), Just(n), 0..kv * g, 1usize..=kv * g, any::<u32>(),
        ))
    ) {
        use tern::kernels::attend::{
            attend_scratch_len, attend_tokens_scratch_len, partial_len, HeadsAt, ATTEND_TOKENS, KEY_BLOCK, SPAN,
        };
        let count = count.min(kv_heads * group - first);
        let kv_dim = kv_heads * hd;
        let mut s = seed;
        let mut rnd = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
        };
        let q: Vec<f32> = (0..count * hd).map(|_| rnd()).collect();
        let keys: Vec<f32> = (0..n.next_multiple_of(KEY_BLOCK) * kv_dim).map(|_| rnd()).collect();
        let values: Vec<f32> = (0..n.next_multiple_of(KEY_BLOCK) * kv_dim).map(|_| rnd()).collect();
        let bits = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect::<Vec<u16>>();
        let (k16, v16) = (bits(&keys), bits(&values));
        let at = HeadsAt { head_dim: hd, first_head: first, group, kv_dim, scale: 1.0 / (hd as f32).sqrt() };
        let mut scratch = vec![0.0; attend_scratch_len(count, hd, SPAN)];
        // Also the prompt kernel: `count` tokens of head `first` from length n - count + 1.
        let mut qt = q.clone();
        qt.resize(ATTEND_TOKENS * hd, 0.0);
        let n0 = (n + 1).saturating_sub(count).max(1);
        let mut scratch_t = vec![0.0; attend_tokens_scratch_len(hd, n0 + count)];
        let keys_t: Vec<f32> = (0..(n0 + count).next_multiple_of(KEY_BLOCK) * kv_dim).map(|i| keys[i % keys.len()]).collect();
        let values_t: Vec<f32> =
            (0..(n0 + count).next_multiple_of(KEY_BLOCK) * kv_dim).map(|i| values[i % values.len()]).collect();
        let (k16t, v16t) = (bits(&keys_t), bits(&values_t));
        let run = |k: &Kernels, scratch: &mut [f32], scratch_t: &mut [f32]| {
            // Every span's partial results.
            let spans = n.div_ceil(SPAN);
            let size = count * partial_len(hd);
            let (mut a, mut b) = (vec![0.0; spans * size], vec![0.0; spans * size]);
            for j in 0..spans {
                let span = j * SPAN..((j + 1) * SPAN).min(n);
                k.attend(&q, at, &keys, &values, scratch, span.clone(), &mut a[j * size..(j + 1) * size]);
                k.attend(&q, at, &k16, &v16, scratch, span, &mut b[j * size..(j + 1) * size]);
            }
            let (mut c, mut d) = (vec![0.0; ATTEND_TOKENS * hd], vec![0.0; ATTEND_TOKENS * hd]);
            k.attend_tokens(&qt, at, &keys_t, &values_t, scratch_t, n0, count, &mut c);
            k.attend_tokens(&qt, at, &k16t, &v16t, scratch_t, n0, count, &mut d);
            (a, b, c, d)
        };
        let want = run(&Kernels::portable(), &mut scratch, &mut scratch_t);
        prop_assert!(want.0 != want.1 && want.2 != want.3, "the f16 cache changes the result");
        for k in Kernels::available() {
            prop_assert_eq!(&run(&k, &mut scratch, &mut scratch_t), &want, "kernel {}", k.name());
        }
    }
}

/// A float matrix of `rows × cols` in `enc` at offset 8 of a file of its bytes, with
/// pseudo-random values (q8: its row scales first; q6/q4: blocks with an f16 scale each).
fn float_matrix(enc: tern_format::Encoding, rows: usize, cols: usize, seed: u32) -> (Vec<u8>, matmul::FloatMatrix) {
    use tern_format::block_quant::{block_bytes, blocks, pack_block, q_range, BLOCK};
    use tern_format::{Encoding, Shape, TensorInfo};
    let mut s = seed;
    let mut rnd = move || {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (s >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let mut file = vec![0u8; 8];
    let values = rows * cols;
    match enc {
        Encoding::F32 => (0..values).for_each(|_| file.extend(rnd().to_le_bytes())),
        Encoding::F16 => (0..values).for_each(|_| file.extend(half::f16::from_f32(rnd()).to_le_bytes())),
        Encoding::Q8 => {
            (0..rows).for_each(|_| file.extend((rnd().abs() * 0.1 + 1e-3).to_le_bytes()));
            (0..values).for_each(|_| file.push((rnd() * 255.0) as i8 as u8));
        }
        _ => {
            let (lo, hi) = q_range(enc);
            let mut blk = vec![0u8; block_bytes(enc)];
            for _ in 0..rows * blocks(cols) {
                let q: Vec<i8> = (0..BLOCK).map(|_| ((rnd() + 0.5) * f32::from(hi - lo)).round() as i8 + lo).collect();
                pack_block(enc, half::f16::from_f32(rnd() * 0.2), &q, &mut blk);
                file.extend(&blk);
            }
        }
    }
    let shape = Shape::Matrix { rows: rows as u64, cols: cols as u64 };
    let length = (file.len() - 8) as u64;
    let info = TensorInfo { name: "m".into(), encoding: enc, shape, offset: 8, length, scale: 1.0, checksum: 0 };
    (file, matmul::FloatMatrix::new(&info))
}

/// The output projection of several rows at once gives each row the bits of its own
/// matvec, on every kernel set, encoding and thread count (a sequence's logits do not
/// depend on what else is in the step).
#[test]
fn float_matmul_rows_are_their_matvecs() {
    use tern_format::Encoding;
    // 150 rows: bands of 64 and a ragged last one; 100 columns: q6/q4 pad x to 128.
    for (enc, cols) in [Encoding::F16, Encoding::F32, Encoding::Q8, Encoding::Q6, Encoding::Q4]
        .into_iter()
        .flat_map(|e| [(e, 100), (e, 64)])
    {
        let rows = 150;
        let (file, m) = float_matrix(enc, rows, cols, 7 + cols as u32);
        let xs: Vec<f32> = (0..5 * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for k in Kernels::available() {
            for threads in [1, 2] {
                let one: Vec<Vec<u32>> = tern::pool::with_threads(threads, || {
                    (0..5)
                        .map(|t| {
                            let mut out = vec![0f32; rows];
                            m.matvec(&k, &file, &xs[t * cols..(t + 1) * cols], &mut out);
                            out.iter().map(|v| v.to_bits()).collect()
                        })
                        .collect()
                })
                .unwrap();
                for n in [1, 2, 5] {
                    let mut out = vec![f32::NAN; n * rows + 3];
                    tern::pool::with_threads(threads, || m.matmul(&k, &file, &xs[..n * cols], n, &mut out)).unwrap();
                    for (t, row) in out.chunks(rows).take(n).enumerate() {
                        let bits: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                        assert!(
                            bits == one[t],
                            "{} {} cols {cols}, {threads} threads, row {t} of {n}",
                            k.name(),
                            enc.name()
                        );
                    }
                    assert!(out[n * rows..].iter().all(|v| v.is_nan()), "wrote past its {n} rows");
                }
                // And matvec is each row's kernel call, as the model made it before matmul.
                assert!(one[0].iter().any(|&b| b != 0), "a matrix of zeros tests nothing");
                assert_eq!(one, kernel_calls(&k, enc, &file, rows, cols, &xs), "{} {}", k.name(), enc.name());
            }
        }
    }
}

/// The bits of one kernel call per (input row, matrix row) of [`float_matrix`]'s matrix.
fn kernel_calls(
    k: &Kernels,
    enc: tern_format::Encoding,
    file: &[u8],
    rows: usize,
    cols: usize,
    xs: &[f32],
) -> Vec<Vec<u32>> {
    use tern_format::block_quant::{self, blocks, BLOCK};
    use tern_format::Encoding;
    let data = &file[8..];
    let (values, rb) = match enc {
        Encoding::F32 => (data, 4 * cols),
        Encoding::F16 => (data, 2 * cols),
        Encoding::Q8 => (&data[4 * rows..], cols),
        _ => (data, block_quant::row_bytes(enc, cols)),
    };
    xs.chunks(cols)
        .map(|x| {
            let mut x = x.to_vec();
            x.resize(blocks(cols) * BLOCK, 0.0);
            (0..rows)
                .map(|r| {
                    let row = &values[r * rb..(r + 1) * rb];
                    let y = match enc {
                        Encoding::F32 => k.dot_f32(row, &x[..cols]),
                        Encoding::F16 => k.dot_f16(row, &x[..cols]),
                        Encoding::Q8 => {
                            k.dot_i8(row, &x[..cols]) * f32::from_le_bytes(data[4 * r..4 * r + 4].try_into().unwrap())
                        }
                        Encoding::Q6 => k.dot_q6(row, &x),
                        _ => k.dot_q4(row, &x),
                    };
                    y.to_bits()
                })
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The multi-input dot kernels (`dots_*`: several weight rows × several inputs at
    /// once) give every (row, input) pair the bits of its own one-input call (`dot_*`) on
    /// every kernel set and encoding, for any number of rows and inputs (tiles of 2 or 1
    /// rows and of 4, 2 and 1 inputs inside) and any length: odd lengths leave every
    /// vector loop's tail, q6/q4 rows any number of blocks.
    #[test]
    fn multi_input_dots_are_their_one_input_dots(
        len in 0usize..300,
        blocks in 1usize..10,
        rows in 1usize..6,
        inputs in 0usize..12,
        seed in any::<u32>(),
    ) {
        use tern_format::block_quant::{block_bytes, pack_block, q_range, BLOCK};
        use tern_format::Encoding;
        let mut s = seed;
        let mut rnd = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        // `rows` rows of one encoding, one after the other, and their length in values.
        let matrix = |enc: Encoding, rnd: &mut dyn FnMut() -> f32| -> (Vec<u8>, usize) {
            let values = rows * len;
            match enc {
                Encoding::F32 => ((0..values).flat_map(|_| (rnd() * 4.0).to_le_bytes()).collect(), len),
                Encoding::F16 => ((0..values).flat_map(|_| half::f16::from_f32(rnd() * 4.0).to_le_bytes()).collect(), len),
                Encoding::Q8 => ((0..values).map(|_| (rnd() * 255.0) as i8 as u8).collect(), len),
                _ => {
                    let (lo, hi) = q_range(enc);
                    let mut m = vec![0u8; rows * blocks * block_bytes(enc)];
                    for blk in m.chunks_mut(block_bytes(enc)) {
                        let q: Vec<i8> = (0..BLOCK).map(|_| ((rnd() + 0.5) * f32::from(hi - lo)).round() as i8 + lo).collect();
                        pack_block(enc, half::f16::from_f32(rnd() * 0.2), &q, blk);
                    }
                    (m, blocks * BLOCK)
                }
            }
        };
        for enc in [Encoding::F16, Encoding::F32, Encoding::Q8, Encoding::Q6, Encoding::Q4] {
            let (w, n) = matrix(enc, &mut rnd);
            let rb = w.len() / rows;
            if rb == 0 {
                continue; // rows of no values: nothing to dot
            }
            let xs: Vec<f32> = (0..inputs * n).map(|_| rnd() * 8.0).collect();
            type One = fn(&Kernels, &[u8], &[f32]) -> f32;
            type Many = fn(&Kernels, &[u8], usize, &[f32], &mut [f32]);
            let (one, many): (One, Many) = match enc {
                Encoding::F16 => (Kernels::dot_f16, Kernels::dots_f16),
                Encoding::F32 => (Kernels::dot_f32, Kernels::dots_f32),
                Encoding::Q8 => (Kernels::dot_i8, Kernels::dots_i8),
                Encoding::Q6 => (Kernels::dot_q6, Kernels::dots_q6),
                _ => (Kernels::dot_q4, Kernels::dots_q4),
            };
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; inputs * rows];
                many(&k, &w, rb, &xs, &mut got);
                for t in 0..inputs {
                    for (r, row) in w.chunks(rb).enumerate() {
                        let want = one(&k, row, &xs[t * n..(t + 1) * n]);
                        let got = got[t * rows + r];
                        prop_assert_eq!(
                            got.to_bits(), want.to_bits(),
                            "{} {} len {} row {} of {}, input {} of {}: {} vs {}", k.name(), enc.name(), n, r, rows, t, inputs, got, want
                        );
                    }
                }
            }
        }
    }
}
