//! What a parallel region of tern's pool costs beyond its work: regions of 16 bands of
//! pure compute (~0.5 µs each, no memory traffic), run 20,000 times by the caller alone
//! and with 2 threads; the overhead is the 2-thread time minus half the time alone. A
//! 2-thread streaming read (plain scoped threads, outside the pool) before each round
//! tells the machine's state: on shared hosts the two vCPUs sometimes stream twice as
//! fast, and then every cache line the threads hand each other costs more. (While
//! regions keep waiting for a preempted worker, the pool runs them alone: the 2-thread
//! time is then about the time alone, and the overhead reads about half of it.)
//!
//! `cargo run --release --example pool_overhead [ROUNDS]`
use std::hint::black_box;
use std::time::Instant;
use tern::pool::{for_bands, Pool};

/// About `iters` dependent multiply-adds.
fn work(iters: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..iters {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

/// GB/s of two threads reading halves of `buf`, one u64 per cache line.
fn probe(buf: &[u64]) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for half in buf.chunks(buf.len() / 2) {
            s.spawn(move || black_box(half.iter().step_by(8).fold(0u64, |a, &x| a.wrapping_add(x))));
        }
    });
    std::mem::size_of_val(buf) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let buf = vec![1u64; 32 << 20];
    let t = Instant::now();
    black_box(work(black_box(1_000_000)));
    let iters = (500.0 * 1e6 / t.elapsed().as_nanos() as f64) as u64;
    let pool = Pool::new(2);
    const N: usize = 20_000;
    for _ in 0..rounds {
        let bw = probe(&buf);
        let (alone, par) = pool.install(|| {
            let time = |f: &dyn Fn()| {
                let t = Instant::now();
                (0..N).for_each(|_| f());
                t.elapsed().as_nanos() as f64 / N as f64 / 1e3
            };
            let alone = time(&|| {
                (0..16).for_each(|_| {
                    black_box(work(iters));
                })
            });
            let par = time(&|| {
                for_bands(16, &|_| {
                    black_box(work(iters));
                })
            });
            (alone, par)
        });
        println!(
            "probe {bw:.1} GB/s; 16 bands of {:.2} us: alone {alone:.2} us, 2 threads {par:.2} us, overhead {:.2} us",
            alone / 16.0,
            par - alone / 2.0
        );
    }
}
