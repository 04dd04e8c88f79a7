"""The GIL is released while tern computes; a Model is shared by threads; Ctrl-C stops
a running generate."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import tern

PROMPT = "It is a truth universally acknowledged"


def test_other_threads_run_while_logits_computes(model_path):
    m = tern.Model(model_path, n_threads=1)
    ids = m.tokenize("word " * 300)[:256]
    samples = []
    done = threading.Event()

    def count():
        n = 0
        while not done.is_set():
            n += 1
            if n % 64 == 0:
                samples.append(time.perf_counter())

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    t = threading.Thread(target=count)
    t.start()
    try:
        windows = []
        for _ in range(3):
            t0 = time.perf_counter()
            m.logits(ids)
            windows.append((t0, time.perf_counter()))
    finally:
        done.set()
        t.join()
        sys.setswitchinterval(old)
    # With the GIL held for the whole call, the counter could not advance inside it
    # (at most at its edges, one switch interval each): it must count in the middle half.
    for t0, t1 in windows:
        quarter = (t1 - t0) / 4
        inside = [s for s in samples if t0 + quarter < s < t1 - quarter]
        assert t1 - t0 > 0.004, "logits of 256 tokens should take milliseconds"
        assert len(inside) > 10, (t1 - t0, len(inside))


def test_threads_share_a_model(model):
    ids = model.tokenize(PROMPT)
    want_logits = model.logits(ids)
    want_text = model.generate(PROMPT, max_tokens=20, temperature=0)
    results, errors = [], []

    def work(i):
        try:
            for _ in range(3):
                if i % 2:
                    results.append(np.array_equal(model.logits(ids), want_logits))
                else:
                    results.append(model.generate(PROMPT, max_tokens=20, temperature=0) == want_text)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [True] * 12


def test_a_stream_stops_when_dropped(model):
    g = model.generate(PROMPT, max_tokens=200, temperature=0, stream=True)
    first = next(g)
    assert first
    g.cancel()
    rest = list(g)
    assert len(rest) < 199  # pieces already made are handed out; the rest are never made


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time, traceback
    import tern
    m = tern.Model(sys.argv[1], n_threads=1)
    mode = sys.argv[2]

    def generate_threads():
        found = []
        for n in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{n}/comm") as f:
                    if f.read().strip() == "tern-generate":
                        found.append(n)
            except FileNotFoundError:  # a thread (the timer's) ended between listing and reading
                pass
        return found

    if mode == "stream":
        g = m.generate("It is", max_tokens=250, temperature=0, stream=True)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            for piece in g:
                pass
            print("NOT INTERRUPTED")
        except KeyboardInterrupt:
            print("INTERRUPTED")
        del g
    else:
        threading.Timer(0.3, lambda: (globals().__setitem__("sent", time.perf_counter()), os.kill(os.getpid(), signal.SIGINT))).start()
        t0 = time.perf_counter()
        try:
            m.generate("It is", max_tokens=250, temperature=0)
            print("NOT INTERRUPTED", time.perf_counter() - t0)
        except KeyboardInterrupt:
            tb = traceback.format_exc()
            print("INTERRUPTED", "in generate" if "in generate" in tb else tb, f"{time.perf_counter() - sent:.3f}")
    # The generation thread stops at its next token.
    deadline = time.time() + 1.0
    while generate_threads() and time.time() < deadline:
        time.sleep(0.01)
    print("THREADS", len(generate_threads()))
    """
)


def run_interrupted(model_path, mode):
    # The portable kernels make 250 tokens take seconds, so the signal lands mid-generation.
    env = dict(os.environ, TERN_KERNELS="portable")
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(model_path), mode], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_ctrl_c_interrupts_a_stream(model_path):
    assert run_interrupted(model_path, "stream") == ["INTERRUPTED", "THREADS", "0"]


def test_ctrl_c_interrupts_generate_within_a_token(model_path):
    out = run_interrupted(model_path, "blocking")
    assert out[:3] == ["INTERRUPTED", "in", "generate"], out
    # The exception comes within the poll interval (50 ms) of the signal, not at the end.
    assert float(out[3]) < 0.5, out
    assert out[4:] == ["THREADS", "0"]
