//! How fast a decoded token's matmul regions can stream, at 2 threads with tern's pool,
//! against the bandwidth probe of `tern bench` run just before, each round:
//!
//! - `kernels`: the real one-token products of every layer (q/k/v, o, gate/up, down, with
//!   the model's own band split), back to back and with the same gaps as the reads;
//! - `reads`: the first 170 MB of the file read as a layer's four regions (q/k/v 1.77 MB
//!   in 36 KB bands, o_proj 0.59 MB in 36 KB, gate/up 3.15 MB in 192 KB, down 1.57 MB in
//!   96 KB) with only a plain read in the bands, back to back and with the caller busy for
//!   some µs between regions (as a decoded layer's norms and attention keep it);
//! - the same bytes whole, in 1 MB bands.
//!
//! `cargo run --release --example region_stream MODEL.tern [ROUNDS] [GAP_US,GAP_US,...]`
//! (gaps default to 3)
use std::hint::black_box;
use std::time::{Duration, Instant};
use tern::kernels::Kernels;
use tern::matmul::{ternary_gemv, ternary_gemv_gated, Combine};
use tern::pool::{for_bands, Pool};
use tern_format::names::BlockTensor;
use tern_format::ternary::{padded_cols, row_bytes};

/// Reads `region` in bands of `band` bytes, in parallel.
#[track_caller]
fn region(k: &Kernels, region: &[u8], band: usize) {
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

/// One decoded token's products of every layer, as `Model` runs them (made-up activations,
/// unit scales: the sums are not used), the caller spinning for the given gap after each
/// region; returns the bytes of weights read.
fn products(model: &tern::Model) -> impl Fn(Duration) -> usize + '_ {
    let (k, f, c) = (model.kernels(), model.file(), model.config());
    let tensor = move |t: BlockTensor, l: u32| {
        let name = t.name(l);
        f.data(f.tensors().iter().find(|i| i.name == name).expect("a block tensor"))
    };
    let (h, inter) = (c.hidden_size as usize, c.intermediate_size as usize);
    let x = |cols: usize| -> Vec<i8> {
        (0..padded_cols(cols)).map(|i| if i < cols { (i * 37 % 255) as i8 } else { 0 }).collect()
    };
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let (xh, xo, xi) = (x(h), x(qd), x(inter));
    let bufs =
        std::cell::RefCell::new([vec![0f32; qd], vec![0f32; kvd], vec![0f32; kvd], vec![0f32; h], vec![0f32; inter]]);
    use BlockTensor::*;
    let layers: Vec<[&[u8]; 7]> = (0..c.n_layers)
        .map(|l| [AttnQ, AttnK, AttnV, AttnOutput, FfnGate, FfnUp, FfnDown].map(|t| tensor(t, l)))
        .collect();
    move |gap| {
        let [q, kk, v, x, g] = &mut *bufs.borrow_mut();
        for &[wq, wk, wv, wo, gate, up, down] in &layers {
            let dsts = [&mut q[..], &mut kk[..], &mut v[..]];
            ternary_gemv(k, [wq, wk, wv], row_bytes(h), &xh, 5, dsts, [Combine::Store; 3], [1e-6; 3]);
            spin(gap);
            ternary_gemv(k, [wo], row_bytes(qd), &xo, 5, [&mut x[..]], [Combine::Add], [1e-6]);
            spin(gap);
            ternary_gemv_gated(k, gate, up, row_bytes(h), &xh, 5, g, Combine::GateSilu, [1e-6; 2]);
            spin(gap);
            ternary_gemv(k, [down], row_bytes(inter), &xi, 5, [&mut x[..]], [Combine::Add], [1e-6]);
            spin(gap);
        }
        layers.iter().flatten().map(|t| t.len()).sum()
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
    let token = products(&model);
    Pool::new(2).install(|| {
        println!("GB/s: probe; kernels, reads back to back; kernels, reads with each of {gaps:?} between regions; whole in 1 MB bands");
        for _ in 0..rounds {
            let probe = tern::bench::stream_pass(&k, bytes);
            let mut line = format!("{:6.1}", probe / 1e9);
            for &g in std::iter::once(&Duration::ZERO).chain(&gaps) {
                let t = Instant::now();
                let n = token(g);
                let secs = t.elapsed().as_secs_f64() - 4.0 * model.config().n_layers as f64 * g.as_secs_f64();
                line += &format!(" {:6.1}", n as f64 / secs / 1e9);
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
