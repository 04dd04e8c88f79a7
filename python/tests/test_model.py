"""Model: its properties, tokenize / detokenize, and logits against the CLI."""

import json

import numpy as np
import pytest
import tokenizers

import tern
from conftest import DEMO, THREADS

TEXTS = [
    "It is a truth universally acknowledged",
    "Mr. Darcy walked in; Elizabeth said nothing.",
    "  two spaces, a tab\tand a newline\n",
    "naïve café — “quoted” ünïcödé",
    "",
]


def inspect_fields(cli, path):
    """`tern inspect`'s config lines as {label: rest of the line}."""
    head = cli("inspect", path).split("\n\n")[0]
    return {line[:14].strip(): line[14:] for line in head.splitlines()}


def test_properties_match_tern_inspect(model, model_path, cli):
    f = inspect_fields(cli, model_path)
    c = model.config
    assert isinstance(c, dict)
    assert f["vocab"] == str(c["vocab_size"]) == "3072"
    assert f["hidden"] == f"{c['hidden_size']} (intermediate {c['intermediate_size']})"
    assert f["layers"] == str(c["n_layers"])
    assert f["heads"] == f"{c['n_heads']} (kv heads {c['n_kv_heads']}, head dim {c['head_dim']})"
    assert f["context"] == str(c["max_positions"])
    assert f["tokens"] == f"bos {c['bos_id']}, eos {c['eos_id']}, pad -" and c["pad_id"] is None
    assert f["arch"].startswith(c["arch"])
    assert f["tokenizer"] == f"{c['tokenizer_bytes']} bytes of tokenizer.json"
    assert f["file"].startswith(f"{model_path} ({c['file_bytes']} bytes, format version {c['format_version']})")
    assert (model.n_vocab, model.n_ctx, model.bos_id, model.eos_ids) == (3072, 256, 1, [2])
    assert model.chat_template is None
    assert model.path == str(model_path)


def test_constructor_arguments(model_path):
    assert tern.Model(model_path, n_threads=1, n_ctx=64).n_ctx == 64
    with pytest.raises(ValueError, match="n_ctx 257 is more than the model's context of 256"):
        tern.Model(model_path, n_ctx=257)
    with pytest.raises(ValueError, match="n_threads must be at least 1"):
        tern.Model(model_path, n_threads=0)
    with pytest.raises(ValueError, match=r"n_ctx must be at least 1 \(got -5\)"):
        tern.Model(model_path, n_ctx=-5)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_is_tern_tokenize_and_the_tokenizers_library(model, model_path, cli, text):
    assert model.tokenize(text) == json.loads(cli("tokenize", model_path, text))
    hf = tokenizers.Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    plain = hf.encode(text, add_special_tokens=False).ids
    assert model.tokenize(text, add_bos=False) == plain
    assert model.tokenize(text) == [1] + plain
    assert model.detokenize(plain) == hf.decode(plain)
    assert model.detokenize(model.tokenize(text)) == hf.decode(model.tokenize(text))


def test_detokenize_refuses_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="token id 3072 is not below the vocabulary size 3072"):
        model.detokenize([5, 3072])
    with pytest.raises(ValueError, match="token id -1"):
        model.detokenize([-1])


def cli_logits(cli, path, ids, all_rows):
    args = ["logits", path, "--tokens", ",".join(map(str, ids)), "--threads", str(THREADS)]
    out = json.loads(cli(*args, *(["--all"] if all_rows else [])))
    assert out["tokens"] == ids
    # serde_json prints each f32 in its shortest round-trip form: float32 parses it back exactly.
    return np.array(out["logits"], dtype=np.float64).astype(np.float32)


def test_logits_are_bit_identical_to_tern_logits(model, model_path, cli):
    ids = model.tokenize(TEXTS[0] + " " + TEXTS[1])
    got = model.logits(ids)
    assert got.dtype == np.float32 and got.shape == (len(ids), model.n_vocab)
    want = cli_logits(cli, model_path, ids, True)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    last = model.logits(ids, all=False)
    assert last.shape == (model.n_vocab,)
    assert np.array_equal(last.view(np.uint32), cli_logits(cli, model_path, ids, False)[0].view(np.uint32))
    assert np.array_equal(last, got[-1])
    # Logits are real predictions: greedy continuation of a known phrase.
    assert model.detokenize([int(got[-1].argmax())]) != ""


def test_logits_argument_errors(model):
    with pytest.raises(ValueError, match="token id 5000 is not below the vocabulary size 3072"):
        model.logits([1, 5000])
    with pytest.raises(ValueError, match="token id -3"):
        model.logits([1, -3])
    with pytest.raises(ValueError, match="needs 257 positions, but the model's context is 256"):
        model.logits([1] * 257)
    with pytest.raises(ValueError, match="at least one token"):
        model.logits([])


def test_perplexity_from_logits_matches_a_log_softmax(model):
    ids = model.tokenize("It is a truth universally acknowledged, that a single man in possession of a good fortune")
    logits = model.logits(ids).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    ppl = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
    # The demo model knows its Austen: far below the 3072 of a uniform guess.
    assert 1.0 < ppl < 100.0, ppl


def mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(str(path)) for line in f)


def test_dropping_a_model_unmaps_its_file(tmp_path, model_path):
    copy = tmp_path / "copy.tern"
    copy.write_bytes(model_path.read_bytes())
    m = tern.Model(copy)
    assert mapped(copy)
    del m
    assert not mapped(copy)
