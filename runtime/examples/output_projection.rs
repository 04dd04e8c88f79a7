//! Times the output projection of N rows: one `FloatMatrix::matmul` of all N (each matrix
//! row read once) against N `matvec` calls (the matrix read N times, as each row's logits
//! were computed before), interleaved, and prints the medians.
//!
//!   cargo run --release -p tern --example output_projection -- MODEL.tern [THREADS] [ROWS,...] [REPS]

use std::time::Instant;
use tern::matmul::FloatMatrix;
use tern::Model;
use tern_format::names;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: output_projection MODEL.tern [THREADS] [ROWS,...] [REPS]");
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let rows: Vec<usize> =
        args.get(3).map_or("1,2,4,8", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let reps: usize = args.get(4).map_or(Ok(15), |s| s.parse())?;
    let model = Model::open(std::path::Path::new(path))?;
    let (c, file) = (model.config(), model.file());
    let name = if c.tied_output { names::TOKEN_EMBD } else { names::OUTPUT };
    let info = file.tensors().iter().find(|t| t.name == name).expect("the output matrix");
    let m = FloatMatrix::new(info);
    let (h, vocab, most) = (c.hidden_size as usize, c.vocab_size as usize, rows.iter().copied().max().unwrap_or(1));
    let xs: Vec<f32> = (0..most * h).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut out = vec![0f32; most * vocab];
    tern::pool::with_threads(threads, || {
        // Per row count, (matmul ms, matvecs ms); each rep runs every row count once.
        let mut times = vec![(Vec::new(), Vec::new()); rows.len()];
        for rep in 0..reps + 2 {
            for (i, &n) in rows.iter().enumerate() {
                let t0 = Instant::now();
                m.matmul(model.kernels(), file.bytes(), &xs[..n * h], n, &mut out);
                let t1 = Instant::now();
                for t in 0..n {
                    m.matvec(model.kernels(), file.bytes(), &xs[t * h..(t + 1) * h], &mut out[t * vocab..]);
                }
                if rep >= 2 {
                    times[i].0.push((t1 - t0).as_secs_f64() * 1e3);
                    times[i].1.push(t1.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("{} output ({vocab} × {h}), {threads} threads, medians of {reps}", info.encoding.name());
        println!("| rows | one matmul ms | N matvecs ms | matmul ÷ matvecs |");
        println!("| ---: | ---: | ---: | ---: |");
        for (i, &n) in rows.iter().enumerate() {
            let (a, b) = (median(&mut times[i].0), median(&mut times[i].1));
            println!("| {n} | {a:.1} | {b:.1} | {:.2} |", a / b);
        }
    })?;
    Ok(())
}
