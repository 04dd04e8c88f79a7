#!/usr/bin/env bash
# tern against llama.cpp and ik_llama.cpp on synthetic checkpoints of one model shape, in one
# interleaved run, written into BENCHMARKS.md (issues 32 and 24). Never run by CI: it takes an hour or more.
#
#   LLAMA_CPP=/path/to/llama.cpp IK_LLAMA=/path/to/ik_llama [SHAPE=large|2b4t] scripts/bench_vs_peers.sh [WORK_DIR]
#
# LLAMA_CPP and IK_LLAMA are source trees with build/bin/llama-bench and build/bin/llama-quantize
# built (CPU only: cmake -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release; for ik_llama.cpp also
# -DGGML_IQK_FA_ALL_QUANTS=OFF).
#
# SHAPE=large (the default): bitnet_b1_58-large (24 layers, hidden 1536, vocab 32002), one F32
# master-weight checkpoint (make_synthetic.py --preset large; SYNTH=DIR uses an existing one).
# WORK_DIR (default /tmp/tern-peers) holds ~6 GB. Defaults P=128,512,2048 DEPTH=1024.
#
# SHAPE=2b4t: bitnet-b1.58-2B-4T (30 layers, hidden 2560, intermediate 6912, 20/5 heads, vocab
# 128256, tied), as two checkpoints, each one "family" of files:
#  - 2b4t: 1bitLLM F16 masters of that shape (make_synthetic.py --preset 2b4t-masters; SiLU): the
#    only BitNet layout llama.cpp's converter reads, so every engine runs the same checkpoint.
#  - 2b4t-packed: the real pre-packed 2B-4T layout (--preset 2b4t; ReLU^2, U8 weights with a
#    weight_scale). llama.cpp cannot run it (its bitnet graph is SiLU only); ik_llama.cpp can (its
#    bitnet-b1.58 architecture): the checkpoint becomes a bitnet.cpp-style I2_S GGUF (the official
#    2B-4T file's layout, by scripts/make_gguf.py's writer, its token list padded to the 128256
#    ids), which ik_llama.cpp's llama-quantize --allow-requantize turns into IQ2_BN.
#  WORK_DIR (default /tmp/tern-peers-2b4t) ends with ~12 GB of model files and peaks near 13 GB:
#  the checkpoints and the intermediate GGUFs (f16 for llama.cpp's, I2_S) are deleted once every
#  file made from them exists (KEEP=1 keeps them; SYNTH=DIR / PACKED=DIR use existing checkpoints,
#  never deleted). Defaults P=128 DEPTH=0 (no cells after a context) and tern files with f16, q8
#  and q4 output matrices (TERN_TYPES).
#
# Steps: tern-convert each checkpoint once per TERN_TYPES entry (--output-type; FAMILY.tern is the
# f16 one, FAMILY-T.tern the others); give the masters folder a SentencePiece tokenizer.model
# (llama.cpp's converter requires one for this architecture and pads its token list to the config's
# vocab_size; its content does not affect speed); llama.cpp's convert_hf_to_gguf.py to an f32
# (large) or f16 (2b4t) GGUF; llama.cpp's llama-quantize to TQ2_0 and ik_llama.cpp's to IQ_TYPES
# (IQ2_BN, and IQ2_BN_R4 for large), each with the default output matrix and with f16 output and
# embedding (like for like with tern's default); rewrite every file in 2 MiB writes (the same
# page-cache layout for all); then PASSES interleaved passes (the engines' order reversed on even
# passes) of pp P, tg N and tg N after a DEPTH-token context at threads T, R repetitions each.
# ik_llama.cpp runs with -rtr 1 (run-time repacking) and -fa IK_FA (each value; a cell keeps the
# faster). Its llama-bench measures tg after a context as `-gp DEPTH,N`; a llama.cpp without `-d`
# gets no such cell.
#
# The table (medians over passes), the ratios (each tern file against each peer's best file of the
# same family and output kind: f16 output against f16 output, compact against compact), each tg
# cell's share of the streaming roofline (tok/s × file bytes / the bandwidth tern's bench probe
# measured at that thread count: every file here is tied, so a token reads the whole file once, KV
# aside), tern bench's own roofline shares and the load averages go between the bench_vs_peers
# markers (`bench_vs_peers 2b4t` for SHAPE=2b4t) in BENCHMARKS.md (or the file BENCHMARKS names),
# replacing the previous run's.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${LLAMA_CPP:?set LLAMA_CPP to a llama.cpp source tree with build/bin/llama-bench}"
: "${IK_LLAMA:?set IK_LLAMA to an ik_llama.cpp source tree with build/bin/llama-bench}"
LLAMA_CPP=$(cd "$LLAMA_CPP" && pwd) IK_LLAMA=$(cd "$IK_LLAMA" && pwd)
for tool in "$LLAMA_CPP/build/bin/llama-bench" "$LLAMA_CPP/build/bin/llama-quantize" \
  "$IK_LLAMA/build/bin/llama-bench" "$IK_LLAMA/build/bin/llama-quantize" "$LLAMA_CPP/convert_hf_to_gguf.py"; do
  [ -e "$tool" ] || { echo "bench_vs_peers: missing $tool" >&2; exit 1; }
done
SHAPE=${SHAPE:-large}
case "$SHAPE" in
  large)
    work=${1:-/tmp/tern-peers} P=${P:-128,512,2048} DEPTH=${DEPTH:-1024} TERN_TYPES=${TERN_TYPES:-f16 q8}
    IK_TYPES=${IK_TYPES:-iq2_bn iq2_bn_r4} GGUF_TYPE=f32 KEEP=${KEEP:-1} marker="bench_vs_peers"
    title="Against llama.cpp and ik_llama.cpp (\`scripts/bench_vs_peers.sh\`)" ;;
  2b4t)
    work=${1:-/tmp/tern-peers-2b4t} P=${P:-128} DEPTH=${DEPTH:-0} TERN_TYPES=${TERN_TYPES:-f16 q8 q4}
    IK_TYPES=${IK_TYPES:-iq2_bn} GGUF_TYPE=f16 KEEP=${KEEP:-0} marker="bench_vs_peers 2b4t"
    title="2B-4T shape against llama.cpp and ik_llama.cpp (issue 24)" ;;
  *) echo "bench_vs_peers: SHAPE must be large or 2b4t, not $SHAPE" >&2; exit 1 ;;
esac
N=${N:-64} T=${T:-1,2} R=${R:-3} PASSES=${PASSES:-2} IK_FA=${IK_FA:-0,1}
BENCHMARKS=${BENCHMARKS:-$here/BENCHMARKS.md}
mkdir -p "$work"
cd "$work"
pip install --quiet numpy safetensors sentencepiece torch transformers gguf >/dev/null 2>&1 || true
# TERN_BIN=DIR: tern and tern-convert already built there (else built from this tree).
if [ -z "${TERN_BIN:-}" ]; then
  (cd "$here" && cargo build --release --quiet -p tern -p tern-convert)
  TERN_BIN=$here/target/release
fi
TERN_BIN=$(cd "$TERN_BIN" && pwd)

missing() { # true if any of the files does not exist
  local f
  for f in "$@"; do [ -f "$f" ] || return 0; done
  return 1
}
# tern_name FAMILY TYPE: FAMILY.tern for the f16 output matrix, FAMILY-TYPE.tern otherwise.
tern_name() { if [ "$2" = f16 ]; then echo "$1.tern"; else echo "$1-$2.tern"; fi; }
quantize() { # engine-dir source type out [f16out]
  local extra=(--allow-requantize)
  [ "${5:-}" = f16out ] && extra+=(--output-tensor-type f16 --token-embedding-type f16)
  # ./ : llama-quantize reads an argument that starts with a digit (2b4t-...) as a type or thread count.
  [ -f "$4" ] || "$1/build/bin/llama-quantize" "${extra[@]}" "./$2" "./$4" "$3" >> quantize.log 2>&1 ||
    { echo "bench_vs_peers: llama-quantize $3 $2 failed (see $work/quantize.log)" >&2; exit 1; }
}
tern_files=() llama_files=() ik_files=()

# 1. The master-weight family: one checkpoint for tern, llama.cpp and ik_llama.cpp.
fam=$SHAPE
synth=${SYNTH:-$fam-ckpt}
[ "$SHAPE" = large ] && synth=${SYNTH:-large}
preset=$([ "$SHAPE" = large ] && echo large || echo 2b4t-masters)
mine=() ik_mine=()
for t in $TERN_TYPES; do mine+=("$(tern_name "$fam" "$t")"); done
for q in $IK_TYPES; do ik_mine+=("$fam-$q.gguf" "$fam-$q-f16out.gguf"); done
llama_mine=("$fam-tq2_0.gguf" "$fam-tq2_0-f16out.gguf")
if missing "${mine[@]}" "${llama_mine[@]}" "${ik_mine[@]}"; then
  gguf=$fam-$GGUF_TYPE.gguf
  if missing "${mine[@]}" || { missing "${llama_mine[@]}" "${ik_mine[@]}" && [ ! -f "$gguf" ]; }; then
    [ -f "$synth/model.safetensors" ] || python3 "$here/scripts/make_synthetic.py" --preset "$preset" -o "$synth"
  fi
  for t in $TERN_TYPES; do
    f=$(tern_name "$fam" "$t")
    [ -f "$f" ] || "$TERN_BIN/tern-convert" "$synth" -o "$f" --output-type "$t"
  done
  if missing "${llama_mine[@]}" "${ik_mine[@]}"; then
    if [ ! -f "$gguf" ]; then
      [ -f "$synth/tokenizer.model" ] ||
        python3 "$here/scripts/spm_tokenizer.py" "$here/../shared/corpus/austen" "$synth"/tokenizer.model
      python3 "$LLAMA_CPP/convert_hf_to_gguf.py" "$synth" --outtype "$GGUF_TYPE" --outfile "$gguf.tmp" >> convert.log 2>&1
      mv "$gguf.tmp" "$gguf"
    fi
    # The checkpoint is no longer needed (the GGUF holds the ternarized weights).
    [ "$KEEP" = 1 ] || [ -n "${SYNTH:-}" ] || rm -rf "$synth"
    quantize "$LLAMA_CPP" "$gguf" TQ2_0 "$fam-tq2_0.gguf"
    quantize "$LLAMA_CPP" "$gguf" TQ2_0 "$fam-tq2_0-f16out.gguf" f16out
    for q in $IK_TYPES; do
      quantize "$IK_LLAMA" "$gguf" "${q^^}" "$fam-$q.gguf"
      quantize "$IK_LLAMA" "$gguf" "${q^^}" "$fam-$q-f16out.gguf" f16out
    done
    [ "$KEEP" = 1 ] || rm -f "$gguf"
  fi
  [ "$KEEP" = 1 ] || [ -n "${SYNTH:-}" ] || rm -rf "$synth"
fi
tern_files+=("${mine[@]}") llama_files+=("${llama_mine[@]}") ik_files+=("${ik_mine[@]}")

# 2. The pre-packed 2B-4T family (SHAPE=2b4t): tern and ik_llama.cpp (through an I2_S GGUF).
if [ "$SHAPE" = 2b4t ]; then
  fam=2b4t-packed
  packed=${PACKED:-$fam-ckpt}
  mine=() ik_mine=()
  for t in $TERN_TYPES; do mine+=("$(tern_name "$fam" "$t")"); done
  for q in $IK_TYPES; do ik_mine+=("$fam-$q.gguf" "$fam-$q-f16out.gguf"); done
  if missing "${mine[@]}" "${ik_mine[@]}"; then
    i2s=$fam-i2_s.gguf
    if missing "${mine[@]}" || [ ! -f "$i2s" ]; then
      [ -f "$packed/model.safetensors" ] || python3 "$here/scripts/make_synthetic.py" --preset 2b4t -o "$packed"
    fi
    for t in $TERN_TYPES; do
      f=$(tern_name "$fam" "$t")
      [ -f "$f" ] || "$TERN_BIN/tern-convert" "$packed" -o "$f" --output-type "$t"
    done
    if missing "${ik_mine[@]}"; then
      if [ ! -f "$i2s" ]; then
        # make_gguf.py's writer on a copy of the folder whose tokenizer.json has all 128256 ids
        # (the synthetic tokenizer has 511; a GGUF's token list sets the vocabulary size).
        rm -rf "$fam-gguf-src" && mkdir "$fam-gguf-src"
        for x in config.json model.safetensors tokenizer_config.json; do ln -s "$(cd "$packed" && pwd)/$x" "$fam-gguf-src/$x"; done
        python3 - "$packed/tokenizer.json" "$fam-gguf-src" "$i2s.tmp" "$here/scripts" <<'PY'
import json, os, sys
src, folder, out, scripts = sys.argv[1:5]
tok = json.load(open(src))
vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
n = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
tok["added_tokens"] += [{"id": i, "content": f"<|pad_{i}|>", "single_word": False, "lstrip": False,
                         "rstrip": False, "normalized": False, "special": False} for i in range(n, vocab)]
json.dump(tok, open(os.path.join(folder, "tokenizer.json"), "w"))
sys.path.insert(0, scripts)
import make_gguf
make_gguf.write(folder, out, "bitnet-b1.58", None, False, lambda ws: ws)
PY
        mv "$i2s.tmp" "$i2s" && rm -rf "$fam-gguf-src"
      fi
      [ "$KEEP" = 1 ] || [ -n "${PACKED:-}" ] || rm -rf "$packed"
      for q in $IK_TYPES; do
        quantize "$IK_LLAMA" "$i2s" "${q^^}" "$fam-$q.gguf"
        quantize "$IK_LLAMA" "$i2s" "${q^^}" "$fam-$q-f16out.gguf" f16out
      done
      [ "$KEEP" = 1 ] || rm -f "$i2s"
    fi
    [ "$KEEP" = 1 ] || [ -n "${PACKED:-}" ] || rm -rf "$packed"
  fi
  tern_files+=("${mine[@]}") ik_files+=("${ik_mine[@]}")
fi
for f in "${tern_files[@]}" "${llama_files[@]}" "${ik_files[@]}"; do
  dd if="$f" of="$f.2m" bs=2M status=none && mv "$f.2m" "$f"
done

# 3. Interleaved passes. Every result becomes one JSON line:
#    {engine, file, family, output, test, threads, tps, bytes, fa} (output: "f16" or "compact"; fa: -fa).
: > results.jsonl
: > roofline.txt
output_of() { case "$1" in *-q[0-9].tern) echo compact ;; *.tern|*f16out*) echo f16 ;; *) echo compact ;; esac; }
family_of() {
  case "$1" in
    large*) echo "bitnet_b1_58-large, F32 masters" ;;
    2b4t-packed*) echo "2B-4T layout: pre-packed U8 + weight_scale, ReLU²" ;;
    *) echo "1bitLLM layout at 2B-4T's shape: F16 masters, SiLU" ;;
  esac
}
to_jsonl() { # engine file: llama-bench JSON (an array) on stdin
  python3 -c "
import json, os, sys
engine, f, output, family = sys.argv[1:5]
for r in json.load(sys.stdin):
    p, n = r['n_prompt'], r['n_gen']
    test = f'tg{n} @ d{p}' if p and n else (f'pp{p}' if p else f'tg{n}')
    if r.get('n_depth'):
        test += f\" @ d{r['n_depth']}\"
    print(json.dumps({'engine': engine, 'file': f, 'family': family, 'output': output, 'test': test,
                      'threads': r['n_threads'], 'tps': r['avg_ts'], 'bytes': os.path.getsize(f),
                      'fa': r.get('flash_attn', '')}))" "$@" "$(output_of "$2")" "$(family_of "$2")" >> results.jsonl
}
has_depth=$("$LLAMA_CPP/build/bin/llama-bench" --help 2>&1 | grep -q -- '--n-depth' && echo yes || echo no)
run_tern() {
  local f d p
  for f in "${tern_files[@]}"; do
    for d in 0 "$DEPTH"; do
      p=$([ "$d" = 0 ] && echo "$P" || echo 0)
      echo "== $f -d $d" >> roofline.txt
      "$TERN_BIN/tern" bench "$f" -p "$p" -n "$N" -d "$d" -t "$T" -r "$R" --json 2>> roofline.txt |
        python3 -c "
import json, sys
for r in json.load(sys.stdin):
    print(json.dumps({'engine': 'tern', 'file': sys.argv[1], 'family': sys.argv[3], 'output': sys.argv[2],
                      'test': r['test'], 'threads': r['threads'], 'tps': r['tokens_per_s'],
                      'bytes': r['model_bytes']}))" "$f" "$(output_of "$f")" "$(family_of "$f")" >> results.jsonl
      # (an if, not `&&`: a false test as the loop's last status would end the script under set -e)
      if [ "$DEPTH" = 0 ]; then break; fi
    done
  done
}
run_llama() {
  local f
  for f in "${llama_files[@]}"; do
    "$LLAMA_CPP/build/bin/llama-bench" -m "$f" -p "$P" -n "$N" -t "$T" -r "$R" -o json 2>/dev/null |
      to_jsonl llama.cpp "$f"
    if [ "$has_depth" = yes ] && [ "$DEPTH" != 0 ]; then
      "$LLAMA_CPP/build/bin/llama-bench" -m "$f" -p 0 -n "$N" -d "$DEPTH" -t "$T" -r "$R" -o json 2>/dev/null |
        to_jsonl llama.cpp "$f"
    fi
  done
}
run_ik() {
  local f gp=()
  [ "$DEPTH" != 0 ] && gp=(-gp "$DEPTH,$N")
  for f in "${ik_files[@]}"; do
    "$IK_LLAMA/build/bin/llama-bench" -m "$f" -p "$P" -n "$N" "${gp[@]}" -t "$T" -r "$R" -rtr 1 -fa "$IK_FA" \
      -o json 2>/dev/null | to_jsonl ik_llama.cpp "$f"
  done
}
for pass in $(seq "$PASSES"); do
  order=(run_tern run_llama run_ik)
  [ $((pass % 2)) = 0 ] && order=(run_ik run_llama run_tern)
  for step in "${order[@]}"; do
    echo "pass $pass, ${step#run_}, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a roofline.txt
    "$step"
  done
done

# 4. The table, the ratios and the roofline shares, into BENCHMARKS.md.
python3 - results.jsonl roofline.txt "$BENCHMARKS" "$(cut -d' ' -f1-3 /proc/loadavg)" "$marker" "$title" <<'PY'
import json, re, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    r.setdefault("family", "")
log = open(sys.argv[2]).read()
# The streaming bandwidth tern's bench probed, per thread count (the best of the passes).
bw = {}
for m in re.finditer(r"roofline, (\d+) thread\(s\):.*?read ([0-9.]+) GB/s", log):
    bw[int(m[1])] = max(bw.get(int(m[1]), 0.0), float(m[2]) * 1e9)
# tern bench's own decode roofline share (decode step bytes over its probe), per file, -d and threads.
own = {}
for block in re.split(r"^== ", log, flags=re.M)[1:]:
    f, d = block.split("\n", 1)[0].split(" -d ")
    for m in re.finditer(r"roofline, (\d+) thread\(s\):.*?(tg\d+) reached [0-9.]+ tok/s \((\d+)% of it\)", block):
        test = m[2] + ("" if d.strip() == "0" else f" @ d{d.strip()}")
        own.setdefault((f, test, int(m[1])), []).append(int(m[3]))
loads = re.findall(r"^pass (\d+), (\w+), load average (.*)$", log, flags=re.M)
tests = sorted({r["test"] for r in rows}, key=lambda t: (t.startswith("tg"), "@" in t, int(re.findall(r"\d+", t)[0])))
threads = sorted({r["threads"] for r in rows})
cells = [(t, n) for t in tests for n in threads]
tg_cells = [(t, n) for t, n in cells if t.startswith("tg")]
files = list(dict.fromkeys((r["family"], r["engine"], r["file"], r["output"], r["bytes"]) for r in rows))
families = list(dict.fromkeys(f[0] for f in files))
def med(e, f, t, n):
    # The median over passes of each -fa setting, and the faster setting.
    v = [r for r in rows if (r["engine"], r["file"], r["test"], r["threads"]) == (e, f, t, n)]
    fas = {r.get("fa", "") for r in v}
    return max((statistics.median(r["tps"] for r in v if r.get("fa", "") == fa) for fa in fas), default=None)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = open("/proc/cpuinfo").read()
isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX2" if "avx2" in flags else "?")
fam_col = len(families) > 1
out = [f"Run of {subprocess.run(['date', '-u', '+%Y-%m-%d %H:%M UTC'], capture_output=True, text=True).stdout.strip()}"
       f" on {cpu} ({isa}), load average at the end {sys.argv[4]}; medians of the passes' means, tok/s.",
       "Load average (1, 5, 15 min) as each engine's turn began: "
       + "; ".join(f"pass {p} {e} {l}" for p, e, l in loads) + ".", "",
       "| " + ("checkpoint | " if fam_col else "") + "engine | file | MiB | " + " | ".join(f"{t} {n}t" for t, n in cells) + " |",
       "|---|" + ("---|" if fam_col else "") + "---|---:|" + "---:|" * len(cells)]
for fam, e, f, o, b in files:
    vals = [med(e, f, t, n) for t, n in cells]
    out.append("| " + (f"{fam} | " if fam_col else "") + f"{e} | {f} | {b / 2**20:.0f} | "
               + " | ".join("–" if v is None else f"{v:.1f}" for v in vals) + " |")
out += ["", "tern / peer, each tern file against the peer's best file of the same checkpoint and output kind "
        "(f16 output against f16 output, compact against compact), per cell:", "",
        "| " + ("checkpoint | " if fam_col else "") + "tern file | against | " + " | ".join(f"{t} {n}t" for t, n in cells) + " |",
        "|---|" + ("---|" if fam_col else "") + "---|" + "---:|" * len(cells)]
for fam, e, f, o, b in files:
    if e != "tern":
        continue
    for peer in ("ik_llama.cpp", "llama.cpp"):
        theirs_files = [pf for pfam, pe, pf, po, _ in files if pfam == fam and pe == peer and po == o]
        if not theirs_files:
            continue
        ratios = []
        for t, n in cells:
            ours = med(e, f, t, n)
            theirs = [v for v in (med(peer, pf, t, n) for pf in theirs_files) if v]
            ratios.append(f"{ours / max(theirs):.2f}×" if ours and theirs else "–")
        kind = "f16-output" if o == "f16" else "compact"
        out.append("| " + (f"{fam} | " if fam_col else "") + f"{f} | {peer}, {kind} ({', '.join(theirs_files)}) | "
                   + " | ".join(ratios) + " |")
if bw:
    out += ["", "Decode roofline share (tok/s × file bytes / streaming bandwidth: "
            + ", ".join(f"{bw[n] / 1e9:.1f} GB/s at {n}t" for n in sorted(bw))
            + ", the best of tern bench's probes in the run):", "",
            "| engine | file | " + " | ".join(f"{t} {n}t" for t, n in tg_cells) + " |",
            "|---|---|" + "---:|" * len(tg_cells)]
    for fam, e, f, o, b in files:
        shares = [med(e, f, t, n) for t, n in tg_cells]
        out.append(f"| {e} | {f} | " + " | ".join("–" if v is None or n not in bw else f"{100 * v * b / bw[n]:.0f}%"
                                                  for v, (t, n) in zip(shares, tg_cells)) + " |")
if own:
    out += ["", "tern bench's own decode roofline share (a decode step's bytes against the probe of the same "
            "repetition set; each pass, in order):", "",
            "| file | " + " | ".join(f"{t} {n}t" for t, n in tg_cells) + " |", "|---|" + "---:|" * len(tg_cells)]
    for fam, e, f, o, b in files:
        if e == "tern":
            out.append(f"| {f} | " + " | ".join(" / ".join(f"{s}%" for s in own.get((f, t, n), [])) or "–"
                                                 for t, n in tg_cells) + " |")
path, marker, title = sys.argv[3], sys.argv[5], sys.argv[6]
text = open(path).read()
begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
block = begin + "\n" + "\n".join(out) + "\n" + end
if begin in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text += f"\n## {title}\n\n" + block + "\n"
open(path, "w").write(text)
print("\n".join(out))
PY
