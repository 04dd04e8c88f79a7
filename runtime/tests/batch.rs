//! Continuous batching's promise: a row's logits are the same bits whatever else runs in
//! its step (other sequences' prompt chunks or decoded tokens, at other positions).

use std::path::Path;
use tern::batch::{Batch, Segment, Sequence};
use tern::{KvType, Model, State};
use tern_format::Encoding;

fn demo() -> (tempfile::TempDir, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("austen.tern");
    let opts = tern_convert::Options { embed: Encoding::F16, progress: false, pause_per_tensor: None };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/austen-tiny");
    tern_convert::convert(&dir, &out, &opts).unwrap();
    (tmp, Model::open(&out).unwrap())
}

/// The logits' bits after every token of `tokens`, run alone as `tern generate` runs a prompt.
fn alone(model: &Model, tokens: &[u32]) -> Vec<Vec<u32>> {
    let mut st = State::new(model.config(), 64, 32).unwrap();
    let mut out = Vec::new();
    model.forward_all(&mut st, tokens, 0, &mut |_, l| out.push(l.iter().map(|x| x.to_bits()).collect())).unwrap();
    out
}

#[test]
fn rows_give_the_same_bits_alone_and_batched() {
    let (_d, model) = demo();
    let c = model.config();
    let vocab = c.vocab_size;
    // Three sequences of different lengths (token ids spread over the vocabulary).
    let seqs: Vec<Vec<u32>> = [12usize, 5, 14]
        .iter()
        .enumerate()
        .map(|(s, &n)| (0..n).map(|i| ((i * 37 + s * 101 + 3) as u32) % vocab).collect())
        .collect();
    let expected: Vec<_> = seqs.iter().map(|t| alone(&model, t)).collect();

    // Steps as a server schedules them: (sequence, tokens this step), prompt chunks beside decode rows.
    let schedule: &[&[(usize, usize)]] = &[
        &[(0, 6), (1, 3)],
        &[(1, 1), (0, 3), (2, 4)],
        &[(0, 1)],
        &[(2, 7), (1, 1), (0, 1)],
        &[(2, 1), (0, 1)],
        &[(2, 2)],
    ];
    let mut states: Vec<Sequence> = (0..3).map(|_| Sequence::new(c, 64, 8, KvType::F32).unwrap()).collect();
    let mut done = [0usize; 3];
    let mut batch = Batch::new(c, 16);
    let mut checked = 0;
    for step in schedule {
        // Disjoint &mut borrows of the sequences in the step's order.
        let mut slots: Vec<Option<&mut Sequence>> = states.iter_mut().map(Some).collect();
        let mut segs: Vec<Segment> = step
            .iter()
            .map(|&(s, n)| Segment {
                seq: slots[s].take().unwrap(),
                tokens: &seqs[s][done[s]..done[s] + n],
                pos: done[s],
                logits: true,
            })
            .collect();
        let mut got = Vec::new();
        batch
            .step(&model, &mut segs, &mut |i, l| got.push((i, l.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())))
            .unwrap();
        for (i, bits) in got {
            let (s, n) = step[i];
            done[s] += n;
            assert!(
                bits == expected[s][done[s] - 1],
                "sequence {s} at position {} differs from its run alone",
                done[s] - 1
            );
            checked += 1;
        }
    }
    assert_eq!(done, [12, 5, 14]);
    assert_eq!(checked, 12);
}

#[test]
fn a_step_rejects_what_does_not_fit() {
    let (_d, model) = demo();
    let c = model.config();
    let mut seq = Sequence::new(c, 4, 4, KvType::F32).unwrap();
    let mut batch = Batch::new(c, 4);
    let toks = [1u32, 2, 3, 4, 5];
    let e =
        batch.step(&model, &mut [Segment { seq: &mut seq, tokens: &toks[..3], pos: 2, logits: true }], &mut |_, _| {});
    assert!(e.unwrap_err().to_string().contains("positions 2..5 exceed its context of 4"));
    let mut big = Sequence::new(c, 16, 8, KvType::F32).unwrap();
    let e = batch.step(&model, &mut [Segment { seq: &mut big, tokens: &toks, pos: 0, logits: true }], &mut |_, _| {});
    assert!(e.unwrap_err().to_string().contains("5 rows exceed the 4"));
    let bad = [c.vocab_size];
    let e = batch.step(&model, &mut [Segment { seq: &mut big, tokens: &bad, pos: 0, logits: true }], &mut |_, _| {});
    assert!(e.unwrap_err().to_string().contains("is not below the vocabulary size"));
}
