//! Times one `Batch::step` of N decode rows (N sequences, one token each, at the same
//! depth) against N = 1, interleaved, and prints the medians: how a step's cost grows with
//! the rows it carries (the core of `tern serve`'s continuous batching).
//!
//!   cargo run --release -p tern --example batch_step -- MODEL.tern [THREADS] [ROWS,...] [REPS] [nologits]
//!
//! With `nologits` the rows skip the output projection (the layers alone).

use std::time::Instant;
use tern::batch::{Batch, Segment, Sequence};
use tern::{KvType, Model};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: batch_step MODEL.tern [THREADS] [ROWS,...] [REPS]");
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let rows: Vec<usize> =
        args.get(3).map_or("1,2,4,8", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let reps: usize = args.get(4).map_or(Ok(15), |s| s.parse())?;
    let logits = args.get(5).map(String::as_str) != Some("nologits");
    let model = Model::open(std::path::Path::new(path))?;
    let c = model.config();
    let most = rows.iter().copied().max().unwrap_or(1);
    tern::pool::with_threads(threads, || -> anyhow::Result<()> {
        let mut seqs: Vec<Sequence> =
            (0..most).map(|_| Sequence::new(c, 256, 32, KvType::F32)).collect::<Result<_, _>>()?;
        let mut batch = Batch::new(c, most);
        let tokens: Vec<u32> = (0..most as u32).map(|i| 100 + i).collect();
        // Touch every KV-cache page the timed steps will write first (a server's slots are
        // reused, their pages long faulted in): one untimed step of all rows per position.
        for pos in 0..reps + 2 {
            batch.step(&model, &mut segments(&mut seqs, &tokens, pos, logits), &mut |_, _| {})?;
        }
        // Per row count, the step times in ms; each rep runs every row count once (interleaved).
        let mut times = vec![Vec::new(); rows.len()];
        for rep in 0..reps + 2 {
            for (i, &n) in rows.iter().enumerate() {
                let mut segs = segments(&mut seqs[..n], &tokens, rep, logits);
                let t0 = Instant::now();
                batch.step(&model, &mut segs, &mut |_, _| {})?;
                if rep >= 2 {
                    times[i].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = median(&mut times[0].clone());
        println!("| rows | step ms (median of {reps}) | × 1 row | tokens/s |");
        println!("| ---: | ---: | ---: | ---: |");
        for (i, &n) in rows.iter().enumerate() {
            let m = median(&mut times[i]);
            println!("| {n} | {m:.1} | {:.2} | {:.1} |", m / base, n as f64 * 1e3 / m);
        }
        Ok(())
    })?
}

/// One decode row per sequence (sequence `i` feeds `tokens[i]`), all at position `pos`.
fn segments<'a>(seqs: &'a mut [Sequence], tokens: &'a [u32], pos: usize, logits: bool) -> Vec<Segment<'a>> {
    seqs.iter_mut().zip(tokens).map(|(seq, t)| Segment { seq, tokens: std::slice::from_ref(t), pos, logits }).collect()
}
