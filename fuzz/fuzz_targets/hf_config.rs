//! Any text as a Hugging Face config.json: an error or a valid config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("config.json");
    if let Ok(parsed) = tern_convert::parse_config(text, path, tern_format::GenerationDefaults::default()) {
        parsed.config.validate().expect("parse_config returns only valid configs");
    }
});
