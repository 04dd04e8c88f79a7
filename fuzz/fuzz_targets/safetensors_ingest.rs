//! Any bytes as model.safetensors beside a valid config.json and tokenizer.json: the whole
//! conversion runs and ends in an error or a valid .tern file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-tied");
    let dir = std::env::temp_dir().join(format!("tern-fuzz-st-{}", std::process::id()));
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
        }
    }
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    let out = dir.join("out.tern");
    let opts = tern_convert::Options { embed: tern_format::Encoding::F16, progress: false, pause_per_tensor: None };
    if tern_convert::convert(&dir, &out, &opts).is_ok() {
        let bytes = std::fs::read(&out).unwrap();
        let file = tern_format::TernFile::parse(&bytes).expect("converter output parses");
        file.verify().expect("converter output verifies");
    }
});
