#!/usr/bin/env python3
"""Throughput of `tern serve` with 1, 2, 4 and 8 concurrent streams (a benchmark, not a test).

  bench_serve.py TERN_BIN[,TERN_BIN...] MODEL.tern [--threads 2] [--tokens 64] [--ctx-size 256] [--rounds 3]
                 [--streams 1,2,4,8] [--interleave]

For each number of streams N, starts `tern serve MODEL --parallel N`, warms it up, then
sends N streaming completions at once (temperature 0, distinct prompts) and measures per
stream the time to first token and the decode rate after it, and overall the aggregate
rate (all tokens over the wall time of the round, prompts and first tokens included) and
the steady decode rate: the tokens all streams received while every one of them was
decoding (from the last stream's first token to the first stream's last token) over that
window's length, i.e. what N streams decoding together deliver once every prompt is in.
With one stream the two decode rates are the same measure. Rounds are repeated and medians
reported. With several binaries (or --interleave), rounds go outermost and each round runs
every stream count against every binary, a fresh warmed-up server each time, so that a
changing machine load falls on all of them alike. Prints a markdown table (one per binary),
with the server's RSS (VmRSS, and the peak VmHWM) after its rounds (interleaved: after the
last round), read from /proc.
"""

import argparse
import http.client
import json
import statistics
import subprocess
import threading
import time
from urllib.parse import urlparse

PROMPTS = [
    "It is a truth universally acknowledged, that a single man",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man",
    "No one who had ever seen Catherine Morland in her infancy",
    "About thirty years ago, Miss Maria Ward, of Huntingdon",
    "Mr. Bennet was among the earliest of those who waited on Mr. Bingley.",
    "Elinor, this eldest daughter, whose advice was so effectual,",
]


def stream_one(base, prompt, tokens, out):
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = last = None
    usage = None
    stamps = []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        # One chunk per token (its text may be empty: the synthetic model's tokens lie
        # beyond its small tokenizer); the finish chunk carries no token.
        if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
            now = time.perf_counter()
            first = first or now
            last = now
            stamps.append(now)
    conn.close()
    n = usage["completion_tokens"]
    out.append({"ttft": first - t0, "tokens": n, "decode_tps": (n - 1) / max(last - first, 1e-9), "end": last,
                "stamps": stamps})


def steady(results):
    """Tokens per second over all streams while every stream was decoding, or None when
    no such window exists (a stream ended before another had its first token)."""
    start = max(r["stamps"][0] for r in results)
    end = min(r["stamps"][-1] for r in results)
    if end <= start:
        return None
    return sum(sum(1 for t in r["stamps"] if start < t <= end) for r in results) / (end - start)


def rss(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields["VmRSS"], fields["VmHWM"]


def one_round(base, n, tokens):
    """N streaming completions at once; the round's figures."""
    results = []
    threads = [threading.Thread(target=stream_one, args=(base, PROMPTS[i % len(PROMPTS)], tokens, results))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    return {
        "aggregate": sum(r["tokens"] for r in results) / wall,
        "steady": steady(results),
        "per_stream": statistics.median(r["decode_tps"] for r in results),
        "ttft": statistics.median(r["ttft"] for r in results),
    }


def start(args, tern, n):
    server = subprocess.Popen(
        [tern, "serve", args.model, "--port", "0", "--parallel", str(n), "--threads", str(args.threads),
         "--ctx-size", str(args.ctx_size)],
        stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().strip().removeprefix("listening on ")
    stream_one(base, "warm up", 8, [])
    return server, base


def stop(server):
    server.terminate()
    server.wait(timeout=30)


def summary(n, rounds, rss_now):
    steadies = [r["steady"] for r in rounds if r["steady"] is not None]
    return {
        "streams": n,
        "aggregate": statistics.median(r["aggregate"] for r in rounds),
        "per_stream": statistics.median(r["per_stream"] for r in rounds),
        "steady": statistics.median(steadies) if steadies else None,
        "ttft": statistics.median(r["ttft"] for r in rounds),
        "rss": rss_now,
    }


def bench(args, tern, n):
    """All rounds of N streams against one server."""
    server, base = start(args, tern, n)
    try:
        rounds = [one_round(base, n, args.tokens) for _ in range(args.rounds)]
        return summary(n, rounds, rss(server.pid))
    finally:
        stop(server)


def interleaved(args, terns, counts):
    """Rounds outermost: each round runs every stream count against every binary (a fresh
    server each, warmed up), so that a changing load falls on all of them alike."""
    rounds = {(t, n): [] for t in terns for n in counts}
    peak = {}
    for _ in range(args.rounds):
        for n in counts:
            for t in terns:
                server, base = start(args, t, n)
                try:
                    rounds[(t, n)].append(one_round(base, n, args.tokens))
                    peak[(t, n)] = rss(server.pid)
                finally:
                    stop(server)
    return {t: [summary(n, rounds[(t, n)], peak[(t, n)]) for n in counts] for t in terns}


def table(rows):
    one, one_steady = rows[0]["aggregate"], rows[0]["steady"]
    print("| streams (= --parallel) | aggregate tok/s | × 1 stream | steady decode tok/s | × 1 stream | "
          "per-stream decode tok/s | time to first token | RSS (peak) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        st = "–" if r["steady"] is None else f"{r['steady']:.1f}"
        st_x = "–" if r["steady"] is None or not one_steady else f"{r['steady'] / one_steady:.2f}"
        print(f"| {r['streams']} | {r['aggregate']:.1f} | {r['aggregate'] / one:.2f} | {st} | {st_x} | "
              f"{r['per_stream']:.1f} | {r['ttft'] * 1e3:.0f} ms | {r['rss'][0]} ({r['rss'][1]}) |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tern", help="the tern binary; several, comma-separated, are compared interleaved")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ctx-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--interleave", action="store_true",
                    help="rounds outermost, every stream count and binary once per round (a fresh server each)")
    args = ap.parse_args()
    terns = args.tern.split(",")
    counts = [int(n) for n in args.streams.split(",")]
    if args.interleave or len(terns) > 1:
        for t, rows in interleaved(args, terns, counts).items():
            print(f"\n{t}:\n")
            table(rows)
    else:
        table([bench(args, terns[0], n) for n in counts])


if __name__ == "__main__":
    main()
