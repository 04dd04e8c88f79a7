//! Times the ternary GEMM kernel alone (`Kernels::ternary_band`, no attention, norms or
//! rescale) over matrices of the 700M shape, for several token counts, and prints G ternary
//! MAC/s: a kernel figure to set against the `vpdpbusd` peak.
//!
//!   cargo run --release -p tern --example gemm_tile -- [TOKENS,...] [REPS] [hot|stream] [THREADS]
//!
//! `hot` (default): one 1536 × 1536 matrix (590 KB, L2-resident) in 32 KB bands, as a
//! prompt's bands run. `stream`: one layer's seven matrices repeated over 160 MB (more than
//! the caches), in the bands `matmul` cuts, so the weights come from memory as in a decode
//! step. With THREADS (default 1) the bands go through `matmul::ternary_gemm` on the pool.
//! Every kernel set this CPU runs is timed, interleaved; medians.

use std::time::Instant;
use tern::kernels::Kernels;
use tern::matmul;
use tern_format::ternary::{padded_cols, row_bytes};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tokens: Vec<usize> =
        args.get(1).map_or("1,2,3,4,5,6,8,16,64", String::as_str).split(',').map(|s| s.parse().unwrap()).collect();
    let reps: usize = args.get(2).map_or(9, |s| s.parse().unwrap());
    let stream = args.get(3).map(String::as_str) == Some("stream");
    let threads: usize = args.get(4).map_or(1, |s| s.parse().unwrap());
    let only = std::env::var("TERN_KERNELS").ok();
    let sets: Vec<Kernels> = Kernels::available()
        .into_iter()
        .filter(|k| k.name().starts_with("avx512") && only.as_deref().is_none_or(|o| o == k.name()))
        .collect();

    // xorshift: reproducible random bytes (every 2-bit code 0..=2, int8 activations).
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cols = 1536;
    let rb = row_bytes(cols);
    let rows = if stream { 160 << 20 } else { 1536 * rb } / rb;
    let packed: Vec<u8> = (0..rows * rb)
        .map(|_| {
            let r = next();
            (0..4).fold(0u8, |b, g| b | (((r >> (8 * g)) % 3) as u8) << (2 * g))
        })
        .collect();
    let most = tokens.iter().copied().max().unwrap_or(1);
    let pc = padded_cols(cols);
    let xq: Vec<i8> = (0..most * pc).map(|i| if i % pc < cols { next() as i8 } else { 0 }).collect();
    let sums: Vec<i32> = xq.chunks(pc).map(|x| x.iter().map(|&v| i32::from(v)).sum()).collect();
    let mut out = vec![0i32; rows * most];

    println!(
        "{} rows × {cols} ({} MB), {}, {threads} thread(s), median of {reps}",
        rows,
        (rows * rb) >> 20,
        if stream { "streamed" } else { "L2-resident" }
    );
    print!("| tokens |");
    for k in &sets {
        print!(" {} ms | G MAC/s |", k.name());
    }
    println!("\n| ---: |{}", " ---: | ---: |".repeat(sets.len()));
    let _ = tern::pool::with_threads(threads, || {
        for &n in &tokens {
            let mut times = vec![Vec::new(); sets.len()];
            for rep in 0..reps + 1 {
                for (i, k) in sets.iter().enumerate() {
                    let (xq, sums, out) = (&xq[..n * pc], &sums[..n], &mut out[..rows * n]);
                    let t0 = Instant::now();
                    if threads > 1 || stream {
                        matmul::ternary_gemm(k, &packed, rb, xq, sums, out);
                    } else {
                        // Bands of 32 KB, as `matmul` cuts a prompt's.
                        let band = (32 * 1024 / rb).max(1);
                        for (b, w) in packed.chunks(band * rb).enumerate() {
                            let r0 = b * band;
                            let nr = w.len() / rb;
                            k.ternary_band(w, rb, xq, sums, &mut out[r0 * n..(r0 + nr) * n]);
                        }
                    }
                    if rep > 0 {
                        times[i].push(t0.elapsed().as_secs_f64());
                    }
                }
            }
            print!("| {n} |");
            for t in &mut times {
                t.sort_by(f64::total_cmp);
                let m = t[t.len() / 2];
                print!(" {:.3} | {:.1} |", m * 1e3, (rows * cols * n) as f64 / m / 1e9);
            }
            println!();
        }
    });
}
