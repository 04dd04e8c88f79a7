#!/usr/bin/env bash
# Fuzz the .tern reader, config.json parsing, safetensors ingestion and GGUF import.
#   scripts/fuzz.sh SECONDS_PER_TARGET      (needs cargo-fuzz: `cargo install cargo-fuzz`)
# Seeds come from the fixtures. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1
# lets the stable toolchain provide them. A crash leaves its input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
export RUSTC_BOOTSTRAP=1
# The targets write their scratch files under the temp dir (one per fuzzing process);
# give them one of their own, gone when this script ends however it ends.
TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/tern-fuzz.XXXXXX")
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
seeds=fuzz/seeds
mkdir -p "$seeds"/tern_reader "$seeds"/hf_config "$seeds"/safetensors_ingest "$seeds"/gguf_ingest
cargo build --release --quiet -p tern-convert
for f in fixtures/tiny-*/; do
  n=$(basename "$f")
  ./target/release/tern-convert "$f" -o "$seeds/tern_reader/$n.tern" > /dev/null
  cp "$f/config.json" "$seeds/hf_config/$n.json"
done
cp fixtures/tiny-tied/model.safetensors "$seeds/safetensors_ingest/tiny-tied.safetensors"
# Longer than -max_len: libFuzzer keeps the first 400000 bytes (header, metadata, infos, some data).
cp fixtures/gguf/*.gguf "$seeds/gguf_ingest/"
for target in tern_reader hf_config safetensors_ingest gguf_ingest; do
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/$target.log"
  if ! cargo fuzz run "$target" "fuzz/corpus/$target" "$seeds/$target" -- \
      -max_total_time="$secs" -max_len=400000 -rss_limit_mb=4096 -print_final_stats=1 > "$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $target failed (a crash leaves its input in fuzz/artifacts/$target)" >&2
    exit 1
  fi
  done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1 || true)
  execs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}' || true)
  echo "fuzz $target: ${secs}s, $execs executions, no crash; $done_line"
done
