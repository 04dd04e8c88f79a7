#!/usr/bin/env bash
# The main job on a committed fixture: convert a Hugging Face BitNet checkpoint folder
# into a .tern file, check it, and generate text from it.
#   scripts/demo.sh [CHECKPOINT_DIR] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:-fixtures/austen-tiny}
prompt=${2:-It is a truth universally acknowledged, that a single man in possession of a good fortune,}
out=target/demo.tern

cargo build --release --quiet -p tern -p tern-convert
./target/release/tern-convert "$model_dir" -o "$out"
./target/release/tern verify "$out"
./target/release/tern generate "$out" --prompt "$prompt" -n 64 --temp 0 --repeat-penalty 1.2
