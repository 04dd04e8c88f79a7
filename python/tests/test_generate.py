"""generate, create_completion and create_chat_completion."""

import pytest

from conftest import THREADS

PROMPT = "It is a truth universally acknowledged"


def cli_generate(cli, path, prompt, n, *flags):
    """The continuation `tern generate` prints after the prompt (its final newline removed)."""
    out = cli("generate", path, "--prompt", prompt, "-n", n, "--threads", THREADS, *flags)
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt) : -1]


def test_greedy_text_is_tern_generate_temp_0(model, model_path, cli):
    for prompt, n in [(PROMPT, 40), ("Mr. Darcy", 25), ("", 10)]:
        want = cli_generate(cli, model_path, prompt, n, "--temp", "0", "--repeat-penalty", "1")
        assert model.generate(prompt, max_tokens=n, temperature=0) == want
        assert len(want) > n  # real words, not an empty reply


def test_seeded_sample_is_tern_generates(model, model_path, cli):
    args = ["--temp", "0.8", "--top-k", "40", "--top-p", "0.95", "--repeat-penalty", "1.1"]
    for seed in (1, 7):
        want = cli_generate(cli, model_path, PROMPT, 30, *args, "--seed", seed)
        assert model.generate(PROMPT, max_tokens=30, repeat_penalty=1.1, seed=seed) == want


def test_same_seed_same_sample(model):
    a = model.generate(PROMPT, max_tokens=30, temperature=1.0, seed=3)
    assert model.generate(PROMPT, max_tokens=30, temperature=1.0, seed=3) == a
    others = {model.generate(PROMPT, max_tokens=30, temperature=1.0, seed=s) for s in (4, 5, 6)}
    assert others - {a}


def test_stream_pieces_join_to_the_same_text(model):
    for kw in ({"temperature": 0}, {"seed": 11}):
        pieces = list(model.generate(PROMPT, max_tokens=40, stream=True, **kw))
        assert len(pieces) > 10 and all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == model.generate(PROMPT, max_tokens=40, **kw)


def test_stop_strings_cut_the_text(model):
    full = model.generate(PROMPT, max_tokens=40, temperature=0)
    stop = full[10:14]
    cut = full[: full.index(stop)]
    assert model.generate(PROMPT, max_tokens=40, temperature=0, stop=stop) == cut
    assert model.generate(PROMPT, max_tokens=40, temperature=0, stop=["zzzz", stop]) == cut
    assert "".join(model.generate(PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True)) == cut


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"max_tokens": -1}, r"max_tokens must be at least 0 \(got -1\)"),
        ({"temperature": -0.5}, "--temp must be a number ≥ 0"),
        ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be at least 0"),
        ({"repeat_penalty": 0.0}, "--repeat-penalty must be a number > 0"),
        ({"stop": ""}, "--stop needs a non-empty string"),
        ({"max_tokens": 250}, r"the prompt \(11 tokens\) plus -n 250 needs 261 positions, but the model's context is 256"),
    ],
)
def test_bad_arguments_are_value_errors(model, kw, message):
    with pytest.raises(ValueError, match=message):
        model.generate(PROMPT, **kw)


def test_a_prompt_longer_than_the_context_is_a_value_error(model):
    with pytest.raises(ValueError, match="the model's context is 256"):
        model.generate("word " * 400, max_tokens=1)
    with pytest.raises(ValueError, match="the model's context is 256"):
        model.create_chat_completion([{"role": "user", "content": "word " * 400}])


def test_create_completion_shape(model):
    r = model.create_completion(PROMPT, max_tokens=12, seed=5)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    (choice,) = r["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["text"] == model.generate(PROMPT, max_tokens=12, seed=5)
    assert choice["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": len(model.tokenize(PROMPT)), "completion_tokens": 12, "total_tokens": len(model.tokenize(PROMPT)) + 12}
    # A stop string ends it with "stop", and counts only the tokens generated.
    text = choice["text"]
    s = model.create_completion(PROMPT, max_tokens=12, seed=5, stop=text[5:8])
    assert s["choices"][0]["text"] == text[: text.index(text[5:8])]
    assert s["choices"][0]["finish_reason"] == "stop"
    assert 0 < s["usage"]["completion_tokens"] < 12


def test_create_completion_stream(model):
    chunks = list(model.create_completion(PROMPT, max_tokens=12, seed=5, stream=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == model.generate(PROMPT, max_tokens=12, seed=5)
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:]] == [None, "length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 12


MESSAGES = [
    {"role": "system", "content": "You are Miss Bennet."},
    {"role": "user", "content": "What do you think of Mr. Darcy?"},
]


def test_create_chat_completion_shape_and_fallback_template(model):
    r = model.create_chat_completion(MESSAGES, max_tokens=20, seed=2)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    (choice,) = r["choices"]
    assert choice["message"]["role"] == "assistant"
    # The documented plain fallback (the model has no chat template).
    prompt = "System: You are Miss Bennet.\nUser: What do you think of Mr. Darcy?\nAssistant:"
    want = model.generate(prompt, max_tokens=20, seed=2, repeat_penalty=1.0, stop="\nUser:")
    assert choice["message"]["content"] == want
    assert choice["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["prompt_tokens"] == len(model.tokenize(prompt))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_create_chat_completion_stream(model):
    chunks = list(model.create_chat_completion(MESSAGES, max_tokens=20, seed=2, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:])
    assert content == model.create_chat_completion(MESSAGES, max_tokens=20, seed=2)["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_without_max_tokens_runs_to_the_end_of_the_context(model):
    r = model.create_chat_completion([{"role": "user", "content": "Tell me a long story."}], temperature=0)
    u = r["usage"]
    if r["choices"][0]["finish_reason"] == "length":
        assert u["total_tokens"] == model.n_ctx
    else:
        assert u["total_tokens"] <= model.n_ctx


def test_bad_messages_are_value_errors(model):
    with pytest.raises(ValueError, match="messages is empty"):
        model.create_chat_completion([])
    with pytest.raises(ValueError, match=r'messages\[1\]: role "tool" is not one of'):
        model.create_chat_completion([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(ValueError, match=r'messages\[0\] has no "content"'):
        model.create_chat_completion([{"role": "user"}])
