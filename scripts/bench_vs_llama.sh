#!/usr/bin/env bash
# tern against llama.cpp on the same synthetic bitnet_b1_58-large checkpoint, in one run.
# Never run by CI: it downloads llama.cpp's source (the llama-cpp-python sdist on PyPI),
# builds it (~17 min on 2 cores) and writes ~6 GB under $WORK.
#
#   scripts/bench_vs_llama.sh [WORK_DIR]      (default /tmp/tern-bench)
#
# Steps: make the 2.9 GB F32 checkpoint (scripts/make_synthetic.py --preset large);
# convert it with tern-convert (f16 output matrix); give it a SentencePiece tokenizer.model
# (llama.cpp's converter requires one for this architecture; its content does not affect
# speed); convert with llama.cpp's convert_hf_to_gguf.py to f16 and quantize to TQ2_0
# twice: default (Q6_K output matrix) and with an f16 output matrix (like for like with
# tern's default); then run `llama-bench` and `tern bench` with the same -p/-n/-t/-r,
# and again after a DEPTH-token context (-d, default 512), interleaving passes, and
# print one table. On x86-64 llama.cpp is built twice: native (-march=native, what a user
# building it gets) and for generic AVX2 (ggml's TQ2_0 kernels are AVX2 code either way;
# on a Zen 5 the generic build ran them 20-30% faster). The ratios are against the faster
# build of each test. At depth tern runs twice: with its default f32 KV cache, and with an
# f16 one (`--cache-type f16`), like for like with llama.cpp's default f16 cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tern-bench}
mkdir -p "$work"
cd "$work"
P=${P:-128} N=${N:-64} R=${R:-3} T=${T:-1,2} PASSES=${PASSES:-2}
# Also pp P and tg N after a context of DEPTH tokens (llama-bench -d; 0 skips it).
DEPTH=${DEPTH:-512}

pip install --quiet numpy safetensors tokenizers sentencepiece torch transformers cmake scikit-build-core ninja >/dev/null

# 1. The checkpoint and tern's file.
[ -f large/model.safetensors ] || python3 "$here/scripts/make_synthetic.py" --preset large -o large
(cd "$here" && cargo build --release --quiet -p tern -p tern-convert)
[ -f large.tern ] || "$here/target/release/tern-convert" large -o large.tern
[ -f large-q8.tern ] || "$here/target/release/tern-convert" large -o large-q8.tern --output-q8

# 2. llama.cpp from the llama-cpp-python source package.
if [ ! -x llama/build/bin/llama-bench ]; then
  mkdir -p dl
  [ -n "$(ls dl/llama_cpp_python-*.tar.gz 2>/dev/null)" ] ||
    pip download --quiet --no-binary :all: --no-deps --no-build-isolation llama-cpp-python -d dl
  rm -rf src && mkdir src && tar xzf dl/llama_cpp_python-*.tar.gz -C src
  rm -rf llama && mv src/llama_cpp_python-*/vendor/llama.cpp llama
  cmake -S llama -B llama/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build llama/build -j "$(nproc)" --target llama-bench llama-quantize >/dev/null
fi
builds=(build)
if [ "$(uname -m)" = x86_64 ]; then
  builds+=(build-avx2)
  if [ ! -x llama/build-avx2/bin/llama-bench ]; then
    cmake -S llama -B llama/build-avx2 -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
      -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build llama/build-avx2 -j "$(nproc)" --target llama-bench >/dev/null
  fi
fi

# 3. llama.cpp's files.
if [ ! -f large/tokenizer.model ]; then
  python3 "$here/scripts/spm_tokenizer.py" "$here/../shared/corpus/austen" large/tokenizer.model
fi
[ -f large-f16.gguf ] || python3 llama/convert_hf_to_gguf.py large --outtype f16 --outfile large-f16.gguf >/dev/null 2>&1
[ -f large-tq2_0.gguf ] || llama/build/bin/llama-quantize large-f16.gguf large-tq2_0.gguf TQ2_0 >/dev/null 2>&1
[ -f large-tq2_0-f16out.gguf ] ||
  llama/build/bin/llama-quantize --output-tensor-type f16 --token-embedding-type f16 \
    large-f16.gguf large-tq2_0-f16out.gguf TQ2_0 >/dev/null 2>&1

# Every file gets the same page-cache layout, rewritten in whole 2 MiB writes: on Linux
# filesystems with large folios each engine's mapping then uses huge pages. tern-convert
# writes that way itself; llama-quantize does not, and its files would otherwise run on
# 4 KiB pages (tern tg64 was 5-12% slower so).
for f in large.tern large-q8.tern large-tq2_0.gguf large-tq2_0-f16out.gguf; do
  dd if="$f" of="$f.2m" bs=2M status=none && mv "$f.2m" "$f"
done

# 4. Benchmarks, interleaved passes; medians per (engine, test, threads).
: > results.jsonl
: > roofline.txt
for pass in $(seq "$PASSES"); do
  # (prompt, generated, depth) of each run: pp and tg from an empty context, then at depth.
  runs=("$P $N 0")
  [ "$DEPTH" -gt 0 ] && runs+=("$P $N $DEPTH")
  for run in "${runs[@]}"; do
    read -r p n d <<< "$run"
    for f in large-tq2_0-f16out.gguf large-tq2_0.gguf; do
      for b in "${builds[@]}"; do
        name=$([ "$b" = build ] && echo native || echo AVX2)
        llama/$b/bin/llama-bench -m "$f" -p "$p" -n "$n" -d "$d" -t "$T" -r "$R" -o jsonl |
          python3 -c "
import json, sys, os
for line in sys.stdin:
    r = json.loads(line)
    test = f\"pp{r['n_prompt']}\" if r['n_prompt'] else f\"tg{r['n_gen']}\"
    if r.get('n_depth'):
        test += f\" @ d{r['n_depth']}\"
    print(json.dumps({'engine': 'llama.cpp ($name) $f', 'test': test, 'threads': r['n_threads'],
                      'tps': r['avg_ts'], 'sd': r['stddev_ts'], 'bytes': os.path.getsize('$f')}))" >> results.jsonl
      done
    done
    kvs=(f32)
    [ "$d" -gt 0 ] && kvs+=(f16)
    for kv in "${kvs[@]}"; do
      for f in large.tern large-q8.tern; do
        "$here/target/release/tern" bench "$f" -p "$p" -n "$n" -d "$d" -t "$T" -r "$R" --json --cache-type "$kv" \
          2>> roofline.txt | python3 -c "
import json, sys
for r in json.load(sys.stdin):
    kv = ' (' + r['kv_cache'] + ' KV)' if 'kv_cache' in r else ''
    print(json.dumps({'engine': 'tern $f' + kv, 'test': r['test'], 'threads': r['threads'],
                      'tps': r['tokens_per_s'], 'sd': r['sd'], 'bytes': r['model_bytes']}))" >> results.jsonl
      done
    done
  done
done
python3 - results.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["engine"], r["test"], r["threads"]) for r in rows}, key=lambda k: (k[1], k[2], k[0]))
print(f"| {'engine / file':36} | {'MiB':>5} | {'test':>12} | {'threads':>7} | {'tok/s (median of passes)':>24} |")
print("|---|---:|---:|---:|---:|")
for k in keys:
    v = [r for r in rows if (r["engine"], r["test"], r["threads"]) == k]
    med = statistics.median(r["tps"] for r in v)
    print(f"| {k[0]:36} | {v[0]['bytes'] / 2**20:5.0f} | {k[1]:>12} | {k[2]:>7} | {med:24.2f} |")
print()
for test in sorted({r["test"] for r in rows}):
    for t in sorted({r["threads"] for r in rows}):
        def med(e):
            return statistics.median(r["tps"] for r in rows if r["engine"] == e and r["test"] == test and r["threads"] == t)
        def llama(f):
            # The faster llama.cpp build for this test, and its name.
            v = [(med(e), e[len("llama.cpp ("):e.index(")")]) for e in {r["engine"] for r in rows}
                 if e.startswith("llama.cpp (") and e.endswith(" " + f)
                 and any(r["engine"] == e and r["test"] == test and r["threads"] == t for r in rows)]
            if not v:
                raise statistics.StatisticsError
            return max(v)
        for kv in ["", " (f16 KV)"]:
            try:
                (lf, bf), (lq, bq) = llama("large-tq2_0-f16out.gguf"), llama("large-tq2_0.gguf")
                print(f"{test}, {t} thread(s){kv or ''}: tern f16-output / TQ2_0 f16-output ({bf}) = "
                      f"{med('tern large.tern' + kv) / lf:.2f}x; "
                      f"tern q8-output / TQ2_0 default ({bq}) = "
                      f"{med('tern large-q8.tern' + kv) / lq:.2f}x")
            except statistics.StatisticsError:
                pass
PY
grep roofline roofline.txt || true
