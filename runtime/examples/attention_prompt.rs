//! Times one layer's attention alone (`Attention::forward`: RoPE, cache stores, attention)
//! for a prompt of N positions in chunks of B tokens, with the model's shape and random
//! queries, keys and values, and prints the multiply-adds per second of attention (scores
//! and weighted values: 2 · heads · head_dim per cached position a token attends to), per
//! second of wall clock and per second of the process's CPU time (which other processes
//! on a shared machine disturb less).
//!
//!   cargo run --release -p tern --example attention_prompt -- MODEL.tern [THREADS] [N,...] [B] [REPS] [f32|f16]

use std::time::Instant;
use tern::attention::{Attention, KvType};
use tern::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: attention_prompt MODEL.tern [THREADS] [N,...] [B] [REPS] [f32|f16]";
    let path = args.get(1).expect(usage);
    let threads: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let lengths: Vec<usize> =
        args.get(3).map_or("128,512,2048", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let batch: usize = args.get(4).map_or(Ok(32), |s| s.parse())?;
    let reps: usize = args.get(5).map_or(Ok(5), |s| s.parse())?;
    let kv = match args.get(6).map_or("f32", String::as_str) {
        "f16" => KvType::F16,
        _ => KvType::F32,
    };
    let model = Model::open(std::path::Path::new(path))?;
    let c = model.config();
    let (hd, heads, kv_heads) = (c.head_dim as usize, c.n_heads as usize, c.n_kv_heads as usize);
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let most = lengths.iter().copied().max().unwrap_or(1);
    let mut att = Attention::new(c, most, batch, kv)?;
    let mut seed = 1u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
    };
    let q: Vec<f32> = (0..most * qd).map(|_| rnd() * 2.0).collect();
    let k: Vec<f32> = (0..most * kvd).map(|_| rnd() * 2.0).collect();
    let v: Vec<f32> = (0..most * kvd).map(|_| rnd()).collect();
    let (mut qb, mut kb, mut out) = (vec![0f32; batch * qd], vec![0f32; batch * kvd], vec![0f32; batch * qd]);
    tern::pool::with_threads(threads, || {
        let mut times = vec![Vec::new(); lengths.len()];
        let mut cpu = vec![Vec::new(); lengths.len()];
        for rep in 0..reps + 1 {
            for (i, &n) in lengths.iter().enumerate() {
                let (t0, c0) = (Instant::now(), cpu_seconds());
                for p0 in (0..n).step_by(batch) {
                    let m = batch.min(n - p0);
                    qb[..m * qd].copy_from_slice(&q[p0 * qd..(p0 + m) * qd]);
                    kb[..m * kvd].copy_from_slice(&k[p0 * kvd..(p0 + m) * kvd]);
                    let vb = &v[p0 * kvd..(p0 + m) * kvd];
                    att.forward(model.kernels(), 0, p0, &mut qb[..m * qd], &mut kb[..m * kvd], vb, &mut out[..m * qd]);
                }
                if rep >= 1 {
                    times[i].push(t0.elapsed().as_secs_f64());
                    cpu[i].push(cpu_seconds() - c0);
                }
            }
        }
        println!(
            "{} attention of one layer ({heads} heads × {hd}, {kv_heads} kv heads, {} cache), {threads} threads, chunks of {batch}, medians of {reps}",
            model.kernels().name(),
            kv.name()
        );
        println!("| prompt | ms per layer | µs per token | G multiply-adds/s | CPU µs per token | G multiply-adds per CPU s |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, &n) in lengths.iter().enumerate() {
            let (t, c) = (median(&mut times[i]), median(&mut cpu[i]));
            let macs = 2.0 * (heads * hd) as f64 * (n * (n + 1) / 2) as f64;
            println!(
                "| {n} | {:.2} | {:.2} | {:.1} | {:.2} | {:.1} |",
                t * 1e3,
                t * 1e6 / n as f64,
                macs / t / 1e9,
                c * 1e6 / n as f64,
                macs / c / 1e9
            );
        }
    })?;
    Ok(())
}

/// CPU seconds this process has run (all its threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
