#!/usr/bin/env bash
# tern against llama.cpp and ik_llama.cpp on the same synthetic bitnet_b1_58-large checkpoint, in one
# interleaved run, written into BENCHMARKS.md (issue 32). Never run by CI: it takes an hour or more.
#
#   LLAMA_CPP=/path/to/llama.cpp IK_LLAMA=/path/to/ik_llama scripts/bench_vs_peers.sh [WORK_DIR]
#
# LLAMA_CPP and IK_LLAMA are source trees with build/bin/llama-bench and build/bin/llama-quantize
# built (CPU only: cmake -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release; for ik_llama.cpp also
# -DGGML_IQK_FA_ALL_QUANTS=OFF). WORK_DIR (default /tmp/tern-peers) holds ~6 GB of files; SYNTH=DIR
# uses an existing `make_synthetic.py --preset large` folder instead of making one.
#
# Steps: tern-convert the checkpoint twice (f16 output matrix, the default; q8 output, --output-q8);
# give the folder a SentencePiece tokenizer.model (llama.cpp's converter requires one for this
# architecture; its content does not affect speed); llama.cpp's convert_hf_to_gguf.py to an f32
# GGUF; llama.cpp's llama-quantize to TQ2_0 and ik_llama.cpp's to IQ2_BN and IQ2_BN_R4, each with
# the default output matrix and with f16 output and embedding (like for like with tern's
# default); rewrite every file in 2 MiB writes (the same page-cache layout for all); then PASSES
# interleaved passes of pp P, tg N and tg N after a DEPTH-token context at threads T, R
# repetitions each. ik_llama.cpp runs with -rtr 1 (run-time repacking) and -fa IK_FA (each
# value; a cell keeps the faster). Its llama-bench measures tg after a context as `-gp DEPTH,N`;
# a llama.cpp without `-d` gets no such cell.
#
# The table (medians over passes), the ratios (tern against ik_llama.cpp's best type, f16
# output against f16 output and compact against compact) and each tg cell's share of the
# streaming roofline (tok/s × file bytes / the bandwidth tern's bench probe measured at that
# thread count: every file here is tied, so a token reads the whole file once, KV aside) go
# between the bench_vs_peers markers in BENCHMARKS.md (or the file BENCHMARKS names), replacing the
# previous run's.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${LLAMA_CPP:?set LLAMA_CPP to a llama.cpp source tree with build/bin/llama-bench}"
: "${IK_LLAMA:?set IK_LLAMA to an ik_llama.cpp source tree with build/bin/llama-bench}"
LLAMA_CPP=$(cd "$LLAMA_CPP" && pwd) IK_LLAMA=$(cd "$IK_LLAMA" && pwd)
for tool in "$LLAMA_CPP/build/bin/llama-bench" "$LLAMA_CPP/build/bin/llama-quantize" \
  "$IK_LLAMA/build/bin/llama-bench" "$IK_LLAMA/build/bin/llama-quantize" "$LLAMA_CPP/convert_hf_to_gguf.py"; do
  [ -e "$tool" ] || { echo "bench_vs_peers: missing $tool" >&2; exit 1; }
done
work=${1:-/tmp/tern-peers}
mkdir -p "$work"
cd "$work"
P=${P:-128,512,2048} N=${N:-64} DEPTH=${DEPTH:-1024} T=${T:-1,2} R=${R:-3} PASSES=${PASSES:-2} IK_FA=${IK_FA:-0,1}
BENCHMARKS=${BENCHMARKS:-$here/BENCHMARKS.md}
pip install --quiet numpy safetensors sentencepiece torch transformers >/dev/null 2>&1 || true

# 1. The checkpoint and tern's files.
synth=${SYNTH:-large}
[ -f "$synth/model.safetensors" ] || python3 "$here/scripts/make_synthetic.py" --preset large -o "$synth"
(cd "$here" && cargo build --release --quiet -p tern -p tern-convert)
[ -f large.tern ] || "$here/target/release/tern-convert" "$synth" -o large.tern
[ -f large-q8.tern ] || "$here/target/release/tern-convert" "$synth" -o large-q8.tern --output-q8

# 2. The GGUF files: one f32 conversion, then each engine's quantizer.
if [ ! -f "$synth/tokenizer.model" ]; then
  python3 "$here/scripts/spm_tokenizer.py" "$here/../shared/corpus/austen" "$synth"/tokenizer.model
fi
[ -f large-f32.gguf ] || python3 "$LLAMA_CPP/convert_hf_to_gguf.py" "$synth" --outtype f32 --outfile large-f32.gguf
quantize() { # engine-dir type name [f16out]
  local out="large-$3.gguf" extra=()
  [ "${4:-}" = f16out ] && extra=(--output-tensor-type f16 --token-embedding-type f16)
  [ -f "$out" ] || "$1/build/bin/llama-quantize" "${extra[@]}" large-f32.gguf "$out" "$2" >/dev/null 2>&1
}
quantize "$LLAMA_CPP" TQ2_0 tq2_0
quantize "$LLAMA_CPP" TQ2_0 tq2_0-f16out f16out
quantize "$IK_LLAMA" IQ2_BN iq2_bn
quantize "$IK_LLAMA" IQ2_BN iq2_bn-f16out f16out
quantize "$IK_LLAMA" IQ2_BN_R4 iq2_bn_r4
quantize "$IK_LLAMA" IQ2_BN_R4 iq2_bn_r4-f16out f16out
llama_files=(large-tq2_0.gguf large-tq2_0-f16out.gguf)
ik_files=(large-iq2_bn.gguf large-iq2_bn-f16out.gguf large-iq2_bn_r4.gguf large-iq2_bn_r4-f16out.gguf)
for f in large.tern large-q8.tern "${llama_files[@]}" "${ik_files[@]}"; do
  dd if="$f" of="$f.2m" bs=2M status=none && mv "$f.2m" "$f"
done

# 3. Interleaved passes. Every result becomes one JSON line:
#    {engine, file, output, test, threads, tps, bytes, fa} (output: "f16" or "compact"; fa: -fa).
: > results.jsonl
: > roofline.txt
to_jsonl() { # engine file output: llama-bench JSON (an array) on stdin
  python3 -c "
import json, os, sys
engine, f, output = sys.argv[1:4]
for r in json.load(sys.stdin):
    p, n = r['n_prompt'], r['n_gen']
    test = f'tg{n} @ d{p}' if p and n else (f'pp{p}' if p else f'tg{n}')
    if r.get('n_depth'):
        test += f\" @ d{r['n_depth']}\"
    print(json.dumps({'engine': engine, 'file': f, 'output': output, 'test': test, 'threads': r['n_threads'],
                      'tps': r['avg_ts'], 'bytes': os.path.getsize(f), 'fa': r.get('flash_attn', '')}))" "$@" \
    >> results.jsonl
}
output_of() { case "$1" in *f16out*|large.tern) echo f16 ;; *) echo compact ;; esac; }
has_depth=$("$LLAMA_CPP/build/bin/llama-bench" --help 2>&1 | grep -q -- '--n-depth' && echo yes || echo no)
for pass in $(seq "$PASSES"); do
  echo "pass $pass, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a roofline.txt
  for f in large.tern large-q8.tern; do
    for d in 0 "$DEPTH"; do
      p=$([ "$d" = 0 ] && echo "$P" || echo 0)
      "$here/target/release/tern" bench "$f" -p "$p" -n "$N" -d "$d" -t "$T" -r "$R" --json 2>> roofline.txt |
        python3 -c "
import json, sys
for r in json.load(sys.stdin):
    print(json.dumps({'engine': 'tern', 'file': '$f', 'output': '$(output_of "$f")', 'test': r['test'],
                      'threads': r['threads'], 'tps': r['tokens_per_s'], 'bytes': r['model_bytes']}))" >> results.jsonl
    done
  done
  for f in "${llama_files[@]}"; do
    "$LLAMA_CPP/build/bin/llama-bench" -m "$f" -p "$P" -n "$N" -t "$T" -r "$R" -o json 2>/dev/null |
      to_jsonl llama.cpp "$f" "$(output_of "$f")"
    if [ "$has_depth" = yes ]; then
      "$LLAMA_CPP/build/bin/llama-bench" -m "$f" -p 0 -n "$N" -d "$DEPTH" -t "$T" -r "$R" -o json 2>/dev/null |
        to_jsonl llama.cpp "$f" "$(output_of "$f")"
    fi
  done
  for f in "${ik_files[@]}"; do
    "$IK_LLAMA/build/bin/llama-bench" -m "$f" -p "$P" -n "$N" -gp "$DEPTH,$N" -t "$T" -r "$R" -rtr 1 -fa "$IK_FA" \
      -o json 2>/dev/null | to_jsonl ik_llama.cpp "$f" "$(output_of "$f")"
  done
done

# 4. The table, the ratios and the roofline shares, into BENCHMARKS.md.
python3 - results.jsonl roofline.txt "$BENCHMARKS" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, re, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
# The streaming bandwidth tern's bench probed, per thread count (the best of the passes).
bw = {}
for m in re.finditer(r"roofline, (\d+) thread\(s\):.*?read ([0-9.]+) GB/s", open(sys.argv[2]).read()):
    bw[int(m[1])] = max(bw.get(int(m[1]), 0.0), float(m[2]) * 1e9)
tests = sorted({r["test"] for r in rows}, key=lambda t: (t.startswith("tg"), "@" in t, int(re.findall(r"\d+", t)[0])))
threads = sorted({r["threads"] for r in rows})
cells = [(t, n) for t in tests for n in threads]
files = list(dict.fromkeys((r["engine"], r["file"], r["output"], r["bytes"]) for r in rows))
def med(e, f, t, n):
    # The median over passes of each -fa setting, and the faster setting.
    v = [r for r in rows if (r["engine"], r["file"], r["test"], r["threads"]) == (e, f, t, n)]
    fas = {r.get("fa", "") for r in v}
    return max((statistics.median(r["tps"] for r in v if r.get("fa", "") == fa) for fa in fas), default=None)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = open("/proc/cpuinfo").read()
isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX2" if "avx2" in flags else "?")
out = [f"Run of {subprocess.run(['date', '-u', '+%Y-%m-%d %H:%M UTC'], capture_output=True, text=True).stdout.strip()}"
       f" on {cpu} ({isa}), load average at the end {sys.argv[4]}; medians of the passes' means, tok/s.", "",
       "| engine | file | MiB | " + " | ".join(f"{t} {n}t" for t, n in cells) + " |",
       "|---|---|---:|" + "---:|" * len(cells)]
for e, f, o, b in files:
    vals = [med(e, f, t, n) for t, n in cells]
    out.append(f"| {e} | {f} | {b / 2**20:.0f} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in vals) + " |")
out += ["", "tern against ik_llama.cpp's best file of the same output kind (and llama.cpp's), per cell:", "",
        "| output | " + " | ".join(f"{t} {n}t" for t, n in cells) + " |", "|---|" + "---:|" * len(cells)]
for o in ("f16", "compact"):
    for peer in ("ik_llama.cpp", "llama.cpp"):
        ratios = []
        for t, n in cells:
            ours = [med(e, f, t, n) for e, f, oo, _ in files if e == "tern" and oo == o]
            theirs = [med(e, f, t, n) for e, f, oo, _ in files if e == peer and oo == o]
            ours, theirs = [v for v in ours if v], [v for v in theirs if v]
            ratios.append(f"{max(ours) / max(theirs):.2f}×" if ours and theirs else "–")
        out.append(f"| {o}, against {peer} | " + " | ".join(ratios) + " |")
if bw:
    out += ["", "Decode roofline share (tok/s × file bytes / streaming bandwidth: "
            + ", ".join(f"{bw[n] / 1e9:.1f} GB/s at {n}t" for n in sorted(bw)) + "):", "",
            "| engine | file | " + " | ".join(f"{t} {n}t" for t, n in cells if t.startswith("tg")) + " |",
            "|---|---|" + "---:|" * sum(t.startswith("tg") for t, _ in cells)]
    for e, f, o, b in files:
        shares = [med(e, f, t, n) for t, n in cells if t.startswith("tg")]
        tg_threads = [n for t, n in cells if t.startswith("tg")]
        out.append(f"| {e} | {f} | " + " | ".join("–" if v is None or n not in bw else f"{100 * v * b / bw[n]:.0f}%"
                                                  for v, n in zip(shares, tg_threads)) + " |")
path = sys.argv[3]
text = open(path).read()
begin, end = "<!-- bench_vs_peers:begin -->", "<!-- bench_vs_peers:end -->"
block = begin + "\n" + "\n".join(out) + "\n" + end
if begin in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text += "\n## Against llama.cpp and ik_llama.cpp (`scripts/bench_vs_peers.sh`)\n\n" + block + "\n"
open(path, "w").write(text)
print("\n".join(out))
PY
