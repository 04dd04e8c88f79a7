#!/usr/bin/env python3
"""Make random-weight checkpoints in the exact 1bitLLM (BitnetForCausalLM) format.

Real tensor names (`model.layers.N.self_attn.inner_attn_ln.weight`, ...), the stored
`rotary_emb.inv_freq`, tied (no lm_head) or untied, F32 / F16 / BF16, one file or
two shards with an index. Weights are random, so outputs mean nothing; shapes,
names and numerics are what the fixtures test.

  make_synthetic.py --preset fixtures           # the committed fixtures under fixtures/
  make_synthetic.py --preset large -o DIR       # bitnet_b1_58-large shape, 2.9 GB F32 (do not commit)
  make_synthetic.py --preset 2b4t -o DIR        # bitnet-b1.58-2B-4T shape, pre-packed, 1.2 GB (do not commit)
  make_synthetic.py --preset 2b4t-masters -o DIR  # the same shape as 1bitLLM F16 masters, 4.8 GB (do not commit)

The 2b4t preset is microsoft/bitnet-b1.58-2B-4T's published layout (BitNetForCausalLM,
autobitlinear, offline): every BitLinear weight U8 [out/4, in] in transformers' packing
(byte [r, c] holds in bit pair i the code w+1 of output row i*(out/4)+r, column c) with a
BF16 [1] weight_scale, sub-norms, ReLU², a tied BF16 embedding; hidden 2560, intermediate
6912, 30 layers, 20/5 heads, vocab 128256. The packed bytes are drawn directly (codes 0/1/2
in every bit pair, never 3), which is exactly the set of packings transformers' pack_weights
produces; the tokenizer and its config come from fixtures/bitnet-2b-tiny (its ids are all below
the vocabulary). Tensors are written in row chunks, so memory stays near 200 MB.

The 2b4t-masters preset has the same dimensions (30 layers, hidden 2560, intermediate 6912,
20/5 heads, vocab 128256, tied) in the 1bitLLM master-weight layout above (BitnetForCausalLM,
F16, SiLU, sub-norms named inner_attn_ln / ffn_layernorm, rope_theta 500000 as 2B-4T): the
only BitNet layout llama.cpp's convert_hf_to_gguf.py reads, so that llama.cpp and tern can run
one checkpoint of 2B-4T's shape (scripts/bench_vs_peers.sh SHAPE=2b4t). A token costs the same
arithmetic as in 2B-4T up to the FFN activation (SiLU here, ReLU^2 there). Its tokenizer.json is
--tokenizer's (ids all below the vocabulary); llama.cpp's converter needs a SentencePiece
tokenizer.model instead, which scripts/spm_tokenizer.py makes. Memory peaks near 3 GB (the
embedding is drawn at once).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
TOKENIZER_512 = os.path.join(FIXTURES, "tokenizer-512.json")

# name: (hidden, intermediate, layers, heads, kv_heads, vocab, dtype, tied, shards, seed)
FIXTURE_SHAPES = {
    "tiny-tied": dict(hidden=64, inter=128, layers=2, heads=4, kv=4, vocab=512, dtype="F32", tied=True, shards=1),
    "tiny-untied": dict(hidden=64, inter=160, layers=3, heads=4, kv=4, vocab=512, dtype="F32", tied=False, shards=1),
    "tiny-odd-gqa-bf16": dict(hidden=96, inter=200, layers=2, heads=6, kv=2, vocab=512, dtype="BF16", tied=True, shards=1),
    "tiny-f16-sharded": dict(hidden=64, inter=172, layers=2, heads=2, kv=2, vocab=512, dtype="F16", tied=False, shards=2),
}
SHAPE_2B4T = dict(hidden=2560, inter=6912, layers=30, heads=20, kv=5, vocab=128256)
TINY_2B = os.path.join(FIXTURES, "bitnet-2b-tiny")
MASTERS_2B4T = dict(SHAPE_2B4T, dtype="F16", tied=True, shards=1)
LARGE = dict(hidden=1536, inter=4096, layers=24, heads=16, kv=16, vocab=32002, dtype="F32", tied=True, shards=1)


def config_json(s, max_pos, rope_theta=10000.0):
    c = {
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv"],
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "hidden_act": "silu",
        "vocab_size": s["vocab"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": s["vocab"] - 2 if s["vocab"] > 32000 else None,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[s["dtype"]],
        "weight_bits": 1,
        "input_bits": 8,
    }
    if not s["tied"]:
        c["tie_word_embeddings"] = False
    return c


def tensor_entries(s, rng, rope_theta=10000.0):
    """(name, dtype, shape, producer) in 1bitLLM naming; weights drawn lazily."""
    h, i, dt = s["hidden"], s["inter"], s["dtype"]
    head_dim = h // s["heads"]
    kv = s["kv"] * head_dim

    def normal(shape, std):
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def norm(n):
        return lambda: (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    inv_freq = (1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))).astype(np.float32)
    # Small embeddings (as in trained models) so that the layers, not the input token, decide the logits.
    out = [("model.embed_tokens.weight", dt, (s["vocab"], h), normal((s["vocab"], h), 0.1))]
    for l in range(s["layers"]):
        p = f"model.layers.{l}"
        out += [
            (f"{p}.input_layernorm.weight", dt, (h,), norm(h)),
            (f"{p}.self_attn.q_proj.weight", dt, (h, h), normal((h, h), h**-0.5)),
            (f"{p}.self_attn.k_proj.weight", dt, (kv, h), normal((kv, h), h**-0.5)),
            (f"{p}.self_attn.v_proj.weight", dt, (kv, h), normal((kv, h), h**-0.5)),
            (f"{p}.self_attn.o_proj.weight", dt, (h, h), normal((h, h), h**-0.5)),
            (f"{p}.self_attn.inner_attn_ln.weight", dt, (h,), norm(h)),
            (f"{p}.self_attn.rotary_emb.inv_freq", "F32", (head_dim // 2,), lambda: inv_freq),
            (f"{p}.post_attention_layernorm.weight", dt, (h,), norm(h)),
            (f"{p}.mlp.gate_proj.weight", dt, (i, h), normal((i, h), h**-0.5)),
            (f"{p}.mlp.up_proj.weight", dt, (i, h), normal((i, h), h**-0.5)),
            (f"{p}.mlp.down_proj.weight", dt, (h, i), normal((h, i), i**-0.5)),
            (f"{p}.mlp.ffn_layernorm.weight", dt, (i,), norm(i)),
        ]
    out.append(("model.norm.weight", dt, (h,), norm(h)))
    if not s["tied"]:
        out.append(("lm_head.weight", dt, (s["vocab"], h), normal((s["vocab"], h), h**-0.5)))
    return out


def make(folder, s, seed, tokenizer, max_pos=128, generation=None, rope_theta=10000.0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json(s, max_pos, rope_theta), f, indent=2)
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(folder, "tokenizer.json"))
    if generation:
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    entries = tensor_entries(s, rng, rope_theta)
    if s["shards"] == 1:
        st.write(os.path.join(folder, "model.safetensors"), entries)
        return
    # Split in two halves by tensor order; the index maps every tensor to its shard.
    half = len(entries) // 2
    parts = [entries[:half], entries[half:]]
    weight_map = {}
    for k, part in enumerate(parts):
        fname = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        st.write(os.path.join(folder, fname), part)
        weight_map.update({name: fname for name, *_ in part})
    total = sum(int(np.prod(shape)) * st.itemsize(dt) for _, dt, shape, _ in entries)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


class Chunk:
    """`rows` rows of a tensor, drawn when called (st.write's chunked producers)."""

    def __init__(self, rows, draw):
        self.rows, self.draw = rows, draw

    def __len__(self):
        return self.rows

    def __call__(self):
        return self.draw(self.rows)


def chunked(rows, cols, draw, per=8192):
    """A producer of `rows` x `cols` in chunks of `per` rows, each `draw(n)`."""
    return lambda: [Chunk(min(per, rows - r), draw) for r in range(0, rows, per)]


def make_2b4t(folder, seed=24):
    """The bitnet-b1.58-2B-4T shape in its pre-packed layout (see the module docstring)."""
    s = SHAPE_2B4T
    h, inter, vocab = s["hidden"], s["inter"], s["vocab"]
    hd = h // s["heads"]
    q, kv = s["heads"] * hd, s["kv"] * hd
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(TINY_2B, "config.json")) as f:
        config = json.load(f)
    config.update(hidden_size=h, intermediate_size=inter, num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], num_key_value_heads=s["kv"], vocab_size=vocab,
                  max_position_embeddings=4096)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(os.path.join(TINY_2B, name), os.path.join(folder, name))
    rng = np.random.default_rng(seed)
    # Every byte of four codes in {0, 1, 2} (weights -1/0/+1 drawn 0.3/0.4/0.3).
    table = np.array([a | b << 2 | c << 4 | d << 6 for a in range(3) for b in range(3) for c in range(3)
                      for d in range(3)], dtype=np.uint8)
    pw = np.array([0.3, 0.4, 0.3])
    probs = np.einsum("a,b,c,d->abcd", pw, pw, pw, pw).reshape(-1)

    def packed(rows, cols):
        return chunked(rows // 4, cols, lambda n: table[rng.choice(81, size=(n, cols), p=probs)], per=1024)

    def bf16_normal(rows, cols, std):
        return chunked(rows, cols, lambda n: rng.standard_normal((n, cols), dtype=np.float32) * np.float32(std))

    def norm(n):
        return lambda: rng.uniform(0.8, 1.2, n).astype(np.float32)

    shapes = {
        "self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    entries = [("model.embed_tokens.weight", "BF16", (vocab, h), bf16_normal(vocab, h, 0.02))]
    for l in range(s["layers"]):
        p = f"model.layers.{l}"
        entries += [
            (f"{p}.input_layernorm.weight", "BF16", (h,), norm(h)),
            (f"{p}.post_attention_layernorm.weight", "BF16", (h,), norm(h)),
            (f"{p}.self_attn.attn_sub_norm.weight", "BF16", (h,), norm(h)),
            (f"{p}.mlp.ffn_sub_norm.weight", "BF16", (inter,), norm(inter)),
        ]
        for lin, (o, i) in shapes.items():
            entries.append((f"{p}.{lin}.weight", "U8", (o // 4, i), packed(o, i)))
            entries.append((f"{p}.{lin}.weight_scale", "BF16", (1,), lambda: np.array([rng.uniform(1.0, 3.0)], np.float32)))
    entries.append(("model.norm.weight", "BF16", (h,), norm(h)))
    st.write(os.path.join(folder, "model.safetensors"), entries)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["fixtures", "large", "2b4t", "2b4t-masters"], required=True)
    ap.add_argument("-o", "--output", help="output folder (large and 2b4t* presets)")
    ap.add_argument("--tokenizer", default=TOKENIZER_512, help="tokenizer.json to copy in")
    args = ap.parse_args()
    if args.preset == "fixtures":
        for seed, (name, s) in enumerate(FIXTURE_SHAPES.items()):
            gen = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20} if name == "tiny-tied" else None
            make(os.path.join(FIXTURES, name), s, seed=1000 + seed, tokenizer=args.tokenizer, generation=gen)
            print("wrote", name)
    else:
        if not args.output:
            ap.error(f"--preset {args.preset} needs -o")
        if args.preset == "2b4t":
            make_2b4t(args.output)
        elif args.preset == "2b4t-masters":
            make(args.output, MASTERS_2B4T, seed=25, tokenizer=args.tokenizer, max_pos=4096, rope_theta=500000.0)
        else:
            make(args.output, LARGE, seed=7, tokenizer=args.tokenizer, max_pos=2048)
        print("wrote", args.output)


if __name__ == "__main__":
    main()
