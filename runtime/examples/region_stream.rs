//! How fast a decoded token's matmul regions can stream when they only read: the first
//! 170 MB of a model file read as a layer's four regions (q/k/v 1.77 MB in 36 KB bands,
//! o_proj 0.59 MB in 36 KB, gate/up 3.15 MB in 192 KB, down 1.57 MB in 96 KB) with tern's
//! pool at 2 threads, back to back or with the caller busy for some µs between regions
//! (as a decoded layer's norms and attention keep it), against the bandwidth probe of
//! `tern bench` run just before.
//!
//! `cargo run --release --example region_stream MODEL.tern [ROUNDS] [GAP_US,GAP_US,...]`
//! (gaps default to 3)
use std::hint::black_box;
use std::time::{Duration, Instant};
use tern::pool::{for_bands, Pool};

/// Reads `region` in bands of `band` bytes, in parallel.
#[track_caller]
fn region(k: &tern::kernels::Kernels, region: &[u8], band: usize) {
    for_bands(region.len().div_ceil(band), &|b| {
        black_box(k.read_sum(&region[b * band..((b + 1) * band).min(region.len())]));
    });
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: region_stream MODEL.tern [ROUNDS] [GAP_US,...]");
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let gaps: Vec<Duration> = args
        .next()
        .unwrap_or_else(|| "3".into())
        .split(',')
        .map(|u| Duration::from_nanos((u.parse::<f64>().expect("gaps are numbers of µs") * 1e3) as u64))
        .collect();
    let model = tern::Model::open(std::path::Path::new(&path)).expect("model");
    let k = *model.kernels();
    let all = model.file().bytes();
    let bytes = &all[..170_000_000.min(all.len())];
    const LAYER: [usize; 4] = [1_770_000, 590_000, 3_150_000, 1_570_000];
    let layer: usize = LAYER.iter().sum();
    Pool::new(2).install(|| {
        println!("GB/s: probe, layers back to back, layers with {gaps:?} between regions, whole in 1 MB bands");
        for _ in 0..rounds {
            let probe = tern::bench::stream_pass(&k, bytes);
            let mut line = format!("{:6.1}", probe / 1e9);
            for &g in std::iter::once(&Duration::ZERO).chain(&gaps) {
                let t = Instant::now();
                for l in bytes.chunks_exact(layer) {
                    let (qkv, rest) = l.split_at(LAYER[0]);
                    let (o, rest) = rest.split_at(LAYER[1]);
                    let (gu, down) = rest.split_at(LAYER[2]);
                    region(&k, qkv, 36_864);
                    spin(g);
                    region(&k, o, 36_864);
                    spin(g);
                    region(&k, gu, 196_608);
                    spin(g);
                    region(&k, down, 98_304);
                    spin(g);
                }
                let n = bytes.len() / layer * layer;
                let secs = t.elapsed().as_secs_f64() - 4.0 * (n / layer) as f64 * g.as_secs_f64();
                line += &format!(" {:6.1}", n as f64 / secs / 1e9);
            }
            let t = Instant::now();
            region(&k, bytes, 1 << 20);
            line += &format!(" {:6.1}", bytes.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
            println!("{line}");
        }
    });
}
