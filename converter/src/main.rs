#![forbid(unsafe_code)]

use clap::{Parser, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Encoding of the embedding and (untied) output matrices
    #[arg(long, value_enum, default_value_t = EmbedType::F16)]
    embed_type: EmbedType,
    /// Store the output/embedding matrix as int8 with a scale per row (smaller, faster decode)
    #[arg(long, conflicts_with = "embed_type")]
    output_q8: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum EmbedType {
    F16,
    F32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tern_convert::interrupt::install() {
        eprintln!("tern-convert: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let opts = Options {
        embed: match (cli.output_q8, cli.embed_type) {
            (true, _) => Encoding::Q8,
            (false, EmbedType::F16) => Encoding::F16,
            (false, EmbedType::F32) => Encoding::F32,
        },
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
