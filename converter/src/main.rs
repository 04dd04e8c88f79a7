#![forbid(unsafe_code)]

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tern_convert::output_types::{output_type, OUTPUT_TYPES};
use tern_convert::{convert, Options};
use tern_format::Encoding;

/// Convert a BitNet b1.58 Hugging Face checkpoint folder (or a bitnet.cpp I2_S GGUF file) into
/// one packed `.tern` file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Folder with config.json, tokenizer.json and model.safetensors (or a sharded index),
    /// or a bitnet.cpp I2_S .gguf file
    input: PathBuf,
    /// The .tern file to write: a new path, or a regular file to replace (atomically, by
    /// renaming the finished file over it; a symlink there is replaced, not followed).
    /// Not `-`, a folder, a device, a FIFO or socket, nor a file of the checkpoint
    #[arg(short, long)]
    output: PathBuf,
    /// Encoding of the embedding and (untied) output matrices: f16, f32, q8 (int8, a scale
    /// per row), q6 or q4 (6 or 4 bits, an f16 scale per 32 values). `--embed-type` is an alias
    #[arg(long, alias = "embed-type", default_value = "f16",
          value_parser = PossibleValuesParser::new(OUTPUT_TYPES.map(|(n, _)| n)).map(|n| output_type(&n).expect("listed")))]
    output_type: Encoding,
    /// The same as `--output-type q8` (kept from earlier versions)
    #[arg(long, conflicts_with = "output_type", hide = true)]
    output_q8: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tern_convert::interrupt::install() {
        eprintln!("tern-convert: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let opts = Options {
        embed: if cli.output_q8 { Encoding::Q8 } else { cli.output_type },
        progress: std::io::stderr().is_terminal(),
        // Test hook, read here only: a pause after each tensor, so that tests can signal or
        // kill a conversion half-way (tests/convert.rs, tests/safety.rs).
        pause_per_tensor: std::env::var("TERN_CONVERT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis),
    };
    match convert(&cli.input, &cli.output, &opts) {
        Ok(summary) => {
            println!("wrote {}: {summary}", cli.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern-convert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
