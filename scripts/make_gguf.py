#!/usr/bin/env python3
"""bitnet.cpp-style I2_S GGUF files from the synthetic pre-packed checkpoints (issue 30 §1).

  fixtures/gguf/bitnet-2b-tiny.i2_s.gguf  from fixtures/bitnet-2b-tiny, as bitnet.cpp's
        official 2B-4T file: general.architecture "bitnet-b1.58", no tokenizer.ggml.pre,
        NEOX RoPE (q/k rows as Hugging Face stores them), tied f16 token_embd, f32 norms,
        I2_S linears whose scale is the checkpoint's weight_scale (autobitlinear multiplies:
        bitnet.cpp's utils/convert-hf-to-gguf-bitnet.py, BitnetModel.write_tensors, passes
        it as quantize_to_i2_s's override_scale).
  fixtures/gguf/falcon-e-tiny.i2_s.gguf   from fixtures/falcon3-tiny, as Falcon-E's files:
        "llama", tokenizer.ggml.pre "falcon_e", q/k rows permuted by llama.cpp's
        LlamaModel.permute, untied f16 output, attention.key_length 48. The checkpoint is
        bitlinear (y = x.W / weight_scale); bitnet.cpp's LlamaModel divides the unpacked
        ternary weights by weight_scale and quantize_i2_s then stores max|W| = 1/weight_scale,
        which multiplies. Here that reciprocal is computed once in f32 (float32(1) /
        float32(weight_scale)), the same number tern's divide convention computes at load.

I2_S (microsoft/BitNet src/ggml-bitnet-mad.cpp quantize_i2_s, ACT_PARALLEL; ik_llama.cpp
dequantize_row_ms_i2s): the n weights row-major in blocks of 128 -> 32 bytes, byte k of a
block holding elements k, k+32, k+64, k+96 at shifts 6, 4, 2, 0, code w + 1; then a 32-byte
tail whose first 4 bytes are the f32 scale. Written with the `gguf` package (PyPI) as int8
with raw_dtype=36 (its enum has no I2_S, and its reader cannot read it back), then read back
by the small parser below, which checks every tensor against what was meant.

  python3 scripts/make_gguf.py        # needs numpy, torch, safetensors, gguf (PyPI)
Deterministic: running it again gives the same bytes.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
from safetensors.torch import load_file
import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
I2_S = 36


def unpack_hf(packed):
    """transformers' unpack_weights: U8 [out/4, in] -> int8 [out, in] (row i*(out/4)+r in bits 2i)."""
    p = packed.numpy().astype(np.uint8)
    return np.concatenate([((p >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)], axis=0)


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py) of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def i2s(w, scale):
    """I2_S payload of a ternary int8 matrix: n/4 bytes of codes, then the f32 scale and 28 zeros."""
    q = (w.reshape(-1) + 1).astype(np.uint8)
    assert q.size % 128 == 0
    q = q.reshape(-1, 4, 32)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed.reshape(-1), tail])


def decode_i2s(data, n):
    codes = np.stack([(data[: n // 4].reshape(-1, 32) >> s) & 3 for s in (6, 4, 2, 0)], axis=1)
    return codes.reshape(-1).astype(np.int8) - 1, np.frombuffer(data[n // 4 : n // 4 + 4].tobytes(), np.float32)[0]


def tokenizer_metadata(w, folder, pre):
    tok = json.load(open(os.path.join(folder, "tokenizer.json")))
    cfg = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    config = json.load(open(os.path.join(folder, "config.json")))
    vocab = dict(tok["model"]["vocab"])
    types = {i: gguf.TokenType.NORMAL for i in vocab.values()}
    for a in tok["added_tokens"]:
        vocab[a["content"]] = a["id"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    by_id = sorted((i, t) for t, i in vocab.items())
    assert [i for i, _ in by_id] == list(range(len(by_id)))
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list([t for _, t in by_id])
    w.add_token_types([types[i] for i, _ in by_id])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    bos = vocab[cfg["bos_token"]]
    eos = config["eos_token_id"]  # as the official 2B-4T file: eos = pad = <|end_of_text|>
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    w.add_add_bos_token(True)
    w.add_chat_template(cfg["chat_template"])
    return len(by_id)


def write(folder, out, arch, pre, permute_qk, scale_of):
    config = json.load(open(os.path.join(folder, "config.json")))
    st = load_file(os.path.join(folder, "model.safetensors"))
    w = gguf.GGUFWriter(out, arch)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    k = lambda key: f"{arch}.{key}"
    w.add_uint32(k("vocab_size"), config["vocab_size"])
    w.add_uint32(k("context_length"), config["max_position_embeddings"])
    w.add_uint32(k("embedding_length"), config["hidden_size"])
    w.add_uint32(k("block_count"), config["num_hidden_layers"])
    w.add_uint32(k("feed_forward_length"), config["intermediate_size"])
    w.add_uint32(k("attention.head_count"), heads)
    w.add_uint32(k("attention.head_count_kv"), kv_heads)
    w.add_float32(k("rope.freq_base"), float(config["rope_theta"]))
    w.add_float32(k("attention.layer_norm_rms_epsilon"), config["rms_norm_eps"])
    w.add_uint32(k("rope.dimension_count"), head_dim)
    if head_dim * heads != config["hidden_size"]:
        w.add_uint32(k("attention.key_length"), head_dim)
        w.add_uint32(k("attention.value_length"), head_dim)
    w.add_file_type(40)  # LLAMA_FTYPE_MOSTLY_I2_S in bitnet.cpp's converter
    tokenizer_metadata(w, folder, pre)

    names = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    expect = {}
    for name in sorted(st, key=lambda n: (n.count("layers."), n)):
        t = st[name]
        if name.endswith("weight_scale"):
            continue
        if name == "model.embed_tokens.weight":
            g, arr = "token_embd.weight", t.float().numpy().astype(np.float16)
        elif name == "lm_head.weight":
            g, arr = "output.weight", t.float().numpy().astype(np.float16)
        elif name == "model.norm.weight":
            g, arr = "output_norm.weight", t.float().numpy().astype(np.float32)
        else:
            layer, rest = name[len("model.layers."):].split(".", 1)
            g = f"blk.{layer}.{names[rest[: -len('.weight')]]}.weight"
            if t.dtype != torch.uint8:
                arr = t.float().numpy().astype(np.float32)
            else:
                tern = unpack_hf(t)
                if permute_qk and g.endswith(("attn_q.weight", "attn_k.weight")):
                    tern = permute(tern, heads if "attn_q" in g else kv_heads)
                scale = scale_of(np.float32(st[name + "_scale"].float().item()))
                payload = i2s(tern, scale)
                w.add_tensor(g, payload.view(np.int8), raw_shape=tern.shape, raw_dtype=I2_S)
                expect[g] = (I2_S, tern, scale)
                continue
        w.add_tensor(g, arr)
        expect[g] = (0 if arr.dtype == np.float32 else 1, arr, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    check(out, expect)


def check(path, expect):
    """A small GGUF parser (the gguf package cannot read type 36): every tensor as meant."""
    b = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("Q")
        s = b[pos : pos + n].decode()
        pos += n
        return s

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(sizes[t])

    assert b[:4] == b"GGUF" and take("4sI")[1] == 3
    n_tensors, n_kv = take("QQ")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    assert sorted(i[0] for i in infos) == sorted(expect)
    for name, dims, typ, off in infos:
        want_type, arr, scale = expect[name]
        assert typ == want_type and dims == list(reversed(arr.shape)), (name, typ, dims)
        n = arr.size
        at = start + off
        if typ == I2_S:
            data = np.frombuffer(b[at : at + n // 4 + 32], np.uint8)
            w, s = decode_i2s(data, n)
            assert np.array_equal(w, arr.reshape(-1)) and s == np.float32(scale) and not data[n // 4 + 4 :].any(), name
        else:
            got = np.frombuffer(b[at : at + arr.nbytes], arr.dtype)
            assert np.array_equal(got, arr.reshape(-1)), name
    print(f"{os.path.relpath(path, ROOT)}: {len(infos)} tensors, {len(kv)} keys, {len(b)} bytes, checked")


def main():
    out = os.path.join(ROOT, "fixtures", "gguf")
    os.makedirs(out, exist_ok=True)
    fx = lambda n: os.path.join(ROOT, "fixtures", n)
    write(fx("bitnet-2b-tiny"), os.path.join(out, "bitnet-2b-tiny.i2_s.gguf"), "bitnet-b1.58", None, False,
          lambda ws: ws)
    write(fx("falcon3-tiny"), os.path.join(out, "falcon-e-tiny.i2_s.gguf"), "llama", "falcon_e", True,
          lambda ws: np.float32(1.0) / ws)


if __name__ == "__main__":
    sys.exit(main())
