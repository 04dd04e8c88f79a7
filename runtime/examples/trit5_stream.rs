//! What a denser weight encoding would do to decoding on this CPU: 5 trits per byte (1.6
//! bits per weight, as llama.cpp's TQ1_0) in place of tern's 2 bits (`T2`).
//!
//! A decoded token reads every ternary weight once, so fewer bytes per weight read less,
//! but each byte then costs more arithmetic to decode. This example times one token's
//! products over 442,368 rows of 1,536 columns (170 MB in `T2`, the ternary matrices of
//! bitnet_b1_58-large), interleaved, at 1 and 2 threads:
//!
//! - `t2`: tern's own kernel ([`Kernels::ternary_band`]) on the `T2` rows;
//! - `t5`: an AVX2 kernel written here, on the same weights packed 5 per byte (rows padded
//!   to 1,600 columns: 320 bytes against 384); its sums are checked equal to `t2`'s;
//! - `read`: a plain read of each encoding's bytes ([`Kernels::read_sum`]), the ceiling.
//!
//! The `t5` layout: groups of 160 columns in 32 bytes; byte `j` of a group holds the
//! codes `t = w + 1` of columns `j + 32i` (i = 0..5) as `q = ⌈256·v/243⌉` with
//! `v = Σ t_i·3^(4-i)`. Then `t_i = (3·m_i) >> 8` where `m_i = q·3^i mod 256` (the trick of
//! llama.cpp's TQ1_0), and `(3m) >> 8` is `[m ≥ 86] + [m ≥ 171]`: byte adds (`m·3` as
//! `m + m + m`, which wraps mod 256) and two signed compares on `m ^ 0x80`, which the
//! same recurrence carries (`3·128 ≡ 128 mod 256`). The compares give `-t` (0, -1 or -2),
//! signed, so the activations take the unsigned side of `maddubs` as `x + 128`; per row,
//! `Σ t` (stored with the row) undoes the offset.
//!
//! `cargo run --release --example trit5_stream [ROUNDS]` (x86-64 with AVX2 only)

#[cfg(target_arch = "x86_64")]
mod t5 {
    use core::arch::x86_64::*;

    /// Columns per group of 32 bytes.
    pub const GROUP: usize = 160;
    /// Bytes ahead of the one being read that the kernel asks for, as tern's kernels do.
    const PREFETCH: usize = 8192;

    /// Packs one row of weights (-1, 0, +1; `cols` a multiple of [`GROUP`]) into `out`
    /// (`cols / 5` bytes); returns `Σ (w + 1)`.
    pub fn pack_row(row: &[i8], out: &mut [u8]) -> i32 {
        for (w, o) in row.chunks_exact(GROUP).zip(out.chunks_exact_mut(32)) {
            for (j, o) in o.iter_mut().enumerate() {
                let v = (0..5).fold(0u32, |v, i| v * 3 + (w[j + 32 * i] + 1) as u32);
                *o = (v * 256).div_ceil(243) as u8;
            }
        }
        row.iter().map(|&w| i32::from(w) + 1).sum()
    }

    /// Code `i` (0..5) of a packed byte, as the kernel computes it.
    pub fn unpack(q: u8, i: u32) -> u8 {
        let m = q.wrapping_mul(3u8.pow(i)) ^ 0x80;
        u8::from(m as i8 > -43) + u8::from(m as i8 > 42)
    }

    /// `Σ w·x` of one row: `xu` is `x + 128` (unsigned, padded with 128), `x_sum` `Σ x`,
    /// `t_sum` the row's `Σ (w + 1)`.
    ///
    /// # Safety
    /// The CPU must support avx2; `row` must have `groups · 32` readable bytes and `xu`
    /// `groups · 160`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn row_dot(row: *const u8, xu: *const u8, groups: usize, x_sum: i32, t_sum: i32) -> i32 {
        let (flip, lo, hi, ones) =
            (_mm256_set1_epi8(-128), _mm256_set1_epi8(-43), _mm256_set1_epi8(42), _mm256_set1_epi16(1));
        let mut acc = _mm256_setzero_si256();
        for g in 0..groups {
            if g % 2 == 0 {
                // A hint that never faults: the address may lie past the row.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(g * 32 + PREFETCH) as *const i8);
            }
            let mut m = _mm256_xor_si256(_mm256_loadu_si256(row.add(g * 32) as *const __m256i), flip);
            let mut s16 = _mm256_setzero_si256();
            for i in 0..5 {
                if i > 0 {
                    m = _mm256_add_epi8(m, _mm256_add_epi8(m, m));
                    // An empty asm that claims to change `m`: without it LLVM folds the
                    // chain into byte multiplies by 9, 27 and 81, which AVX2 lacks and it
                    // emulates at several times the cost of two adds.
                    // SAFETY: the asm has no instructions; it reads and writes `m` only.
                    core::arch::asm!("/* {m} */", m = inout(ymm_reg) m, options(pure, nomem, nostack, preserves_flags));
                }
                // -t: each compare is -1 where it holds.
                let neg_t = _mm256_add_epi8(_mm256_cmpgt_epi8(m, lo), _mm256_cmpgt_epi8(m, hi));
                let xv = _mm256_loadu_si256(xu.add(g * GROUP + 32 * i) as *const __m256i);
                // (x + 128)·(-t), pairs: ≤ 255·2·2 = 1020 in magnitude; five: ≤ 5100.
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(xv, neg_t));
            }
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones));
        }
        let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        // S = Σ (x + 128)·(-t) = -Σ x·t - 128·Σ t, and Σ x·w = Σ x·t - Σ x.
        -_mm_cvtsi128_si32(s) - 128 * t_sum - x_sum
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::hint::black_box;
    use std::time::Instant;
    use tern::kernels::Kernels;
    use tern_format::ternary::{pack_row, padded_cols, row_bytes};

    if !is_x86_feature_detected!("avx2") {
        eprintln!("trit5_stream: this CPU has no AVX2");
        return;
    }
    let rounds: usize = std::env::args().nth(1).map_or(5, |r| r.parse().expect("ROUNDS: a number"));
    let (rows, cols) = (442_368usize, 1536usize);
    let (rb2, cols5) = (row_bytes(cols), cols.div_ceil(t5::GROUP) * t5::GROUP);
    let rb5 = cols5 / 5;
    let k = Kernels::detect();

    // Weights: zero with probability 1/3, else ±1 (xorshift; fixed seed).
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut w2, mut w5, mut t_sums) = (vec![0u8; rows * rb2], vec![0u8; rows * rb5], vec![0i32; rows]);
    let mut w = vec![0i8; cols5];
    for r in 0..rows {
        for v in w[..cols].iter_mut() {
            *v = (next() % 3) as i8 - 1;
        }
        // The padding columns hold code 0 (w = -1) against x = 0: they add nothing.
        w[cols..].fill(-1);
        pack_row(&w[..cols], &mut w2[r * rb2..(r + 1) * rb2]);
        t_sums[r] = t5::pack_row(&w, &mut w5[r * rb5..(r + 1) * rb5]);
    }
    // One token's activations.
    let mut x = vec![0i8; padded_cols(cols)];
    for v in x[..cols].iter_mut() {
        *v = next() as i8;
    }
    x[0] = -128;
    let x_sum: i32 = x.iter().map(|&v| i32::from(v)).sum();
    let mut xu = vec![128u8; cols5];
    for (u, &v) in xu.iter_mut().zip(&x[..cols]) {
        *u = (i32::from(v) + 128) as u8;
    }
    // Every value of 5 trits round-trips through its packed byte.
    for v in 0..243u32 {
        let q = (v * 256).div_ceil(243) as u8;
        let back = (0..5).fold(0u32, |a, i| a * 3 + t5::unpack(q, i) as u32);
        assert_eq!(back, v, "5 trits of {v} through byte {q}");
    }

    // One token over rows `r0..r1`, `BAND` rows per kernel call, as a decode band would.
    const BAND: usize = 96;
    let run_t2 = |r0: usize, r1: usize, out: &mut [i32]| {
        for (b, o) in (r0..r1).step_by(BAND).zip(out.chunks_mut(BAND)) {
            let e = (b + BAND).min(r1);
            k.ternary_band(&w2[b * rb2..e * rb2], rb2, &x, &[x_sum], o);
        }
    };
    let run_t5 = |r0: usize, r1: usize, out: &mut [i32]| {
        for (r, o) in (r0..r1).zip(out.iter_mut()) {
            // SAFETY: AVX2 was detected above; row `r` has `rb5` = groups · 32 bytes and
            // `xu` has `cols5` = groups · 160.
            *o = unsafe { t5::row_dot(w5[r * rb5..].as_ptr(), xu.as_ptr(), cols5 / t5::GROUP, x_sum, t_sums[r]) };
        }
    };
    let (mut o2, mut o5) = (vec![0i32; rows], vec![0i32; rows]);
    run_t2(0, rows, &mut o2);
    run_t5(0, rows, &mut o5);
    assert_eq!(o2, o5, "the two encodings' sums differ");
    println!(
        "{rows} rows x {cols} columns: t2 {:.1} MB, t5 {:.1} MB ({:.3}x); kernels {}; sums equal",
        w2.len() as f64 / 1e6,
        w5.len() as f64 / 1e6,
        w5.len() as f64 / w2.len() as f64,
        k.name()
    );

    // Each of `threads` threads takes a contiguous share of the rows; returns seconds.
    let timed = |threads: usize, f: &(dyn Fn(usize, usize, &mut [i32]) + Sync), out: &mut [i32]| {
        let t0 = Instant::now();
        let share = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, o) in out.chunks_mut(share).enumerate() {
                s.spawn(move || f(i * share, i * share + o.len(), o));
            }
        });
        t0.elapsed().as_secs_f64()
    };
    let read = |threads: usize, bytes: &[u8]| {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for c in bytes.chunks(bytes.len().div_ceil(threads)) {
                s.spawn(move || black_box(k.read_sum(c)));
            }
        });
        t0.elapsed().as_secs_f64()
    };
    // Hot: the first 1,000 rows (384 KB in t2, 320 KB in t5: within L2) again and again,
    // so the kernels' arithmetic alone sets the pace.
    for _ in 0..3 {
        let (n, reps) = (1000, 300);
        let t0 = Instant::now();
        for _ in 0..reps {
            run_t2(0, n, &mut o2[..n]);
        }
        let t2 = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for _ in 0..reps {
            run_t5(0, n, &mut o5[..n]);
        }
        let t5 = t0.elapsed().as_secs_f64();
        let gb = |bytes: usize, s: f64| (reps * n * bytes) as f64 / s / 1e9;
        println!(
            "hot, 1 thread: t2 {:.2} GB/s ({:.1} G weights/s), t5 {:.2} GB/s ({:.1} G weights/s)",
            gb(rb2, t2),
            gb(rb2, t2) * 4.0,
            gb(rb5, t5),
            gb(rb5, t5) * 5.0
        );
    }
    println!("tokens/s of the rows alone (GB/s of the encoding's bytes); per round, in the order run");
    for threads in [1, 2] {
        for round in 0..rounds {
            let r2 = read(threads, &w2);
            let t2 = timed(threads, &run_t2, &mut o2);
            let r5 = read(threads, &w5);
            let t5 = timed(threads, &run_t5, &mut o5);
            let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
            println!(
                "{threads} thread(s), round {round}: read t2 {:.1} ({:.2}); t2 {:.1} ({:.2}); read t5 {:.1} ({:.2}); \
                 t5 {:.1} ({:.2}); t5 / t2 {:.3}",
                1.0 / r2,
                gb(w2.len(), r2),
                1.0 / t2,
                gb(w2.len(), t2),
                1.0 / r5,
                gb(w5.len(), r5),
                1.0 / t5,
                gb(w5.len(), t5),
                t2 / t5
            );
        }
    }
    assert_eq!(o2, o5);
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("trit5_stream: x86-64 only");
}
