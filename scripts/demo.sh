#!/usr/bin/env bash
# The main job on a committed fixture: convert a Hugging Face BitNet checkpoint folder
# into a .tern file, check it, and generate text from it.
#   scripts/demo.sh [CHECKPOINT_DIR] [PROMPT]
# CHECKPOINT_DIR is relative to the folder the script is run from (default: the committed
# fixtures/austen-tiny). With TERN_BIN_DIR set, the tern and tern-convert binaries there
# are used instead of a release build (the tests do this).
set -euo pipefail
absolute() { [[ -z $1 || $1 == /* ]] && printf '%s' "$1" || printf '%s/%s' "$PWD" "$1"; }
model_dir=$(absolute "${1:-}")
bin=$(absolute "${TERN_BIN_DIR:-}")
cd "$(dirname "$0")/.."
model_dir=${model_dir:-fixtures/austen-tiny}
prompt=${2:-It is a truth universally acknowledged, that a single man in possession of a good fortune,}
out=target/demo.tern
mkdir -p target

if [[ -z $bin ]]; then
    cargo build --release --quiet -p tern -p tern-convert
    bin=target/release
fi
"$bin/tern-convert" "$model_dir" -o "$out"
"$bin/tern" verify "$out"
"$bin/tern" generate "$out" --prompt "$prompt" -n 64 --temp 0 --repeat-penalty 1.2
