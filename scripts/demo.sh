#!/usr/bin/env bash
# The main job on a committed fixture: convert a Hugging Face BitNet checkpoint folder
# into a .tern file, check it, and generate text from it.
#   scripts/demo.sh [CHECKPOINT_DIR] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:-fixtures/tiny-tied}
prompt=${2:-It is a truth universally acknowledged}
out=target/demo.tern

cargo build --release --quiet -p tern -p tern-convert
./target/release/tern-convert "$model_dir" -o "$out"
./target/release/tern verify "$out"
./target/release/tern generate "$out" --prompt "$prompt" -n 48 --temp 0
