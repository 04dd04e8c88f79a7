//! Any bytes as a .tern file: parse, verify, read every tensor; if the structure is valid,
//! load it as a model and run two tokens. Nothing may panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = tern_format::TernFile::parse(data) else { return };
    let _ = file.verify();
    for t in file.tensors() {
        let _ = file.verify_tensor(t);
        let _ = file.tensor(&t.name).map(|x| x.data.len());
    }
    // The runtime maps files, so hand it one in memory-backed storage.
    let path = std::env::temp_dir().join(format!("tern-fuzz-{}.tern", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(data).unwrap();
    drop(f);
    if let Ok(model) = tern::Model::open(&path) {
        let c = model.config().clone();
        if u64::from(c.hidden_size) * u64::from(c.n_layers) < 1 << 16 {
            if let Ok(mut st) = tern::State::new(&c, 2, 2) {
                let _ = model.forward(&mut st, &[0, c.vocab_size - 1], 0);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
});
