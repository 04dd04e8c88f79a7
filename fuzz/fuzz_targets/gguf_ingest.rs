//! Any bytes as a `.gguf` file: the GGUF import runs and ends in an error or a valid .tern
//! file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("tern-fuzz-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.gguf");
    std::fs::write(&input, data).unwrap();
    let out = dir.join("out.tern");
    let opts = tern_convert::Options { embed: tern_format::Encoding::F16, progress: false, pause_per_tensor: None };
    if tern_convert::convert(&input, &out, &opts).is_ok() {
        let bytes = std::fs::read(&out).unwrap();
        let file = tern_format::TernFile::parse(&bytes).expect("converter output parses");
        file.verify().expect("converter output verifies");
    }
});
