#!/usr/bin/env python3
"""The official `openai` Python package against `tern serve`.

  openai_client_test.py TERN_BIN MODEL.tern

Starts `tern serve MODEL --port 0`, points `openai.OpenAI(base_url=...)` at it, and checks
chat completions (whole and streamed), completions, and 8 concurrent requests (each equal
to its result alone, at temperature 0). Exits non-zero on any failure.
"""

import concurrent.futures
import subprocess
import sys

import openai

PROMPTS = [
    "It is a truth universally acknowledged",
    "Mr. Darcy",
    "She was",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The family of Dashwood",
    "Elizabeth",
    "It was a fine morning",
    "Captain Wentworth",
]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def main():
    tern, model = sys.argv[1], sys.argv[2]
    server = subprocess.Popen(
        [tern, "serve", model, "--port", "0", "--parallel", "4", "--threads", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise AssertionError(f"unexpected startup line {line!r}")
        base = line[len("listening on "):]
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120)
        run(client)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(client):
    models = client.models.list()
    check(len(models.data) == 1 and models.data[0].object == "model", "models.list() lists the model")
    name = models.data[0].id

    messages = [{"role": "user", "content": "Who is Mr. Darcy?"}]
    whole = client.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
    reply = whole.choices[0].message.content
    check(whole.object == "chat.completion" and whole.choices[0].message.role == "assistant", "chat completion")
    check(whole.choices[0].finish_reason in ("stop", "length"), f"finish_reason {whole.choices[0].finish_reason}")
    check(whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens, "chat usage adds up")
    print(f"  reply: {reply!r}")

    stream = client.chat.completions.create(
        model=name,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(pieces) == reply, "streamed chat equals the whole reply")
    check(finish == whole.choices[0].finish_reason, "streamed finish_reason")
    check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens, "streamed usage")

    comp = client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=20, temperature=0)
    check(comp.object == "text_completion" and len(comp.choices[0].text) > 0, "completion")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=20, temperature=0, stream=True)
        if c.choices
    )
    check(streamed == comp.choices[0].text, "streamed completion equals the whole one")

    def one(prompt):
        r = client.completions.create(model=name, prompt=prompt, max_tokens=32, temperature=0)
        return r.choices[0].text

    solo = [one(p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(one, PROMPTS))
    for i, (a, b) in enumerate(zip(solo, together)):
        check(a == b, f"concurrent request {i} equals its solo result")

    try:
        client.completions.create(model=name, prompt="x", max_tokens=1, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "temperature" in str(e), "out-of-range temperature is a 400")
    print("openai client test: all passed")


if __name__ == "__main__":
    main()
