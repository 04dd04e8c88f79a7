#!/usr/bin/env python3
"""Independent reference forward pass of BitNet b1.58, numpy float64.

Written from the model's definition, not from tern's Rust code; reads the Hugging Face
checkpoint folder directly (never a .tern file). Three layouts:

  1bitLLM (BitnetForCausalLM, no quantization_config): float master weights
             s_w = 1 / max(mean|W|, 1e-5)           (f32, as torch's weight_quant does)
             Wq  = clamp(round(W * s_w), -1, 1)       (f32, round half to even)
  pre-packed (quantization_config.quant_method "bitnet"; bitnet-b1.58-2B-4T, Falcon3-1.58bit):
             `.weight` U8 [out/4, in]: byte [r, c] holds in bits 2i..2i+1 the code of
             Wq[i*out/4 + r, c], code 0/1/2 = -1/0/+1; `.weight_scale` [1] taken as given
  BitLinear  s_x = 127 / max(max|x|, 1e-5)            (per token)
             xq  = clamp(round(x * s_x), -128, 127)
             y   = (xq . Wq) / (s_x * s_w)            1bitLLM
             y   = (xq . Wq) / (s_x * weight_scale)   linear_class "bitlinear" (the default)
             y   = (xq . Wq) / s_x * weight_scale     linear_class "autobitlinear", offline
  online     linear_class "autobitlinear", quantization_mode "online": float masters, as 1bitLLM's
  use_rms_norm  each BitLinear's input x -> x / sqrt(mean(x^2) + rms_norm_eps) * <linear>.rms_norm.weight
             (quantization_config.rms_norm_eps, default 1e-6) before the quantization
  bias       <linear>.bias: y + b, except offline autobitlinear: ((xq . Wq) / s_x + b) * weight_scale
  layer      h = x + o_proj(sub1(attn(rope(q(n1)), rope(k(n1)), v(n1))))   n1 = input_layernorm(x)
             out = h + down_proj(sub2(act(gate(n2)) * up(n2)))             n2 = post_attention_layernorm(h)
             sub1 / sub2: the RMSNorms self_attn.inner_attn_ln / mlp.ffn_layernorm (1bitLLM) or
             self_attn.attn_sub_norm / mlp.ffn_sub_norm (2B-4T), each only when its tensor exists;
             act: silu or relu2 (relu(g)^2) from hidden_act; head_dim from the config when present
  logits     model.norm, then the tied embed_tokens (or lm_head when present)

Usage: reference.py FIXTURE_DIR [-o golden.json]   (default: FIXTURE_DIR/golden.json)
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

PROMPT = "It is a truth universally acknowledged, that a single man in possession"
GREEDY_STEPS = 32
SUB_NORMS = {
    "attn": ("self_attn.inner_attn_ln.weight", "self_attn.attn_sub_norm.weight"),
    "ffn": ("mlp.ffn_layernorm.weight", "mlp.ffn_sub_norm.weight"),
}


def unpack_ternary(packed):
    """U8 [out/4, in] -> int8 [out, in] in {-1, 0, 1}: row i*(out/4) + r is bits 2i..2i+1 of row r."""
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.concatenate([(packed >> (2 * i)) & 3 for i in range(4)], axis=0)
    if codes.max(initial=0) > 2:
        raise ValueError("packed ternary weight holds code 3 (only 0/1/2 = -1/0/+1 are defined)")
    return codes.astype(np.int8) - 1


def packing(c):
    """'mul' or 'div' (how weight_scale applies) for a pre-packed checkpoint, None for 1bitLLM."""
    q = c.get("quantization_config")
    if q is None:
        return None
    if q.get("quant_method") != "bitnet":
        raise ValueError(f"quantization_config.quant_method {q.get('quant_method')!r}: only 'bitnet' is known")
    linear_class = q.get("linear_class", "bitlinear")
    mode = q.get("quantization_mode", "offline")
    if mode not in ("offline", "online"):
        raise ValueError(f"quantization_config.quantization_mode {mode!r}: not 'offline' or 'online'")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"quantization_config.linear_class {linear_class!r}: not 'bitlinear' or 'autobitlinear'")
    if linear_class == "autobitlinear" and mode == "online":
        return None  # float master weights, quantized as 1bitLLM's
    return "mul" if linear_class == "autobitlinear" else "div"


def linear_norm_eps(c):
    """The eps of the RMSNorm inside every BitLinear (quantization_config.use_rms_norm), or None."""
    q = c.get("quantization_config") or {}
    return q.get("rms_norm_eps", 1e-6) if q.get("use_rms_norm") else None


class Reference:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            c = json.load(f)
        self.c = c
        self.t = st.read_checkpoint(folder)
        self.h = c["hidden_size"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads", self.n_heads)
        self.hd = c.get("head_dim", self.h // self.n_heads)
        self.eps = c.get("rms_norm_eps", 1e-5)
        self.theta = c.get("rope_theta", 10000.0)
        self.n_layers = c["num_hidden_layers"]
        self.tied = c.get("tie_word_embeddings") is True or "lm_head.weight" not in self.t
        self.scale_rule = packing(c)
        self.lin_eps = linear_norm_eps(c)
        self.act = c.get("hidden_act", "silu")
        if self.act not in ("silu", "relu2"):
            raise ValueError(f"hidden_act {self.act!r}: only silu and relu2 are known")
        self.act_quant = True
        self._wq = {}

    # --- BitLinear -------------------------------------------------------------------
    def ternary(self, name):
        """(Wq as float64 in {-1,0,1}, s): 1bitLLM's s_w with torch's float32 weight_quant
        arithmetic, or a pre-packed checkpoint's unpacked weight and its weight_scale."""
        if name not in self._wq and self.scale_rule is not None:
            scale = self.t[name + "_scale"]
            if self.t[name].dtype != np.uint8 or scale.shape != (1,):
                raise ValueError(f"{name}: want U8 [out/4, in] and a [1] weight_scale, got "
                                 f"{self.t[name].dtype} {self.t[name].shape} and {scale.shape}")
            self._wq[name] = (unpack_ternary(self.t[name]).astype(np.float64), float(scale[0]))
        if name not in self._wq:
            w32 = self.t[name].astype(np.float32)
            mean = np.float32(np.abs(w32.astype(np.float64)).mean())
            s_w = np.float32(1.0) / max(mean, np.float32(1e-5))
            wq = np.clip(np.round(w32 * s_w), -1, 1)
            self._wq[name] = (wq.astype(np.float64), float(s_w))
        return self._wq[name]

    @staticmethod
    def quantize(x):
        s_x = 127.0 / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
        return np.clip(np.round(x * s_x), -128, 127), s_x

    def scaled(self, name, acc, s_x):
        """The BitLinear output from the integer dot products acc and the activation scale s_x."""
        wq, s = self.ternary(name)
        if self.scale_rule == "mul":
            return acc / s_x * s
        return acc / (s_x * s)

    def bitlinear(self, name, x):
        """The BitLinear `name` (`....weight`) of x: its own input RMSNorm first when the
        config has use_rms_norm; its bias (`....bias`) after the scale, except for an offline
        autobitlinear, which adds it before multiplying by weight_scale."""
        base = name[: -len(".weight")]
        if self.lin_eps is not None:
            x = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.lin_eps) * self.t[base + ".rms_norm.weight"]
        wq, s = self.ternary(name)
        b = self.t.get(base + ".bias")
        if self.scale_rule == "mul" and b is not None:
            if self.act_quant:
                xq, s_x = self.quantize(x)
                return (xq @ wq.T / s_x + b) * s
            return (x @ wq.T + b) * s
        if not self.act_quant:
            y = x @ wq.T * s if self.scale_rule == "mul" else x @ wq.T / s
        else:
            xq, s_x = self.quantize(x)
            y = self.scaled(name, xq @ wq.T, s_x)
        return y if b is None else y + b

    def sub_norm(self, x, p, which):
        for name in SUB_NORMS[which]:
            if f"{p}.{name}" in self.t:
                return self.rmsnorm(x, f"{p}.{name}")
        return x

    def activation(self, g):
        if self.act == "relu2":
            return np.maximum(g, 0.0) ** 2
        return g / (1.0 + np.exp(-g))

    # --- pieces ----------------------------------------------------------------------
    def rmsnorm(self, x, name):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * self.t[name]

    def rope(self, x, positions):
        """x: [T, heads, hd]; Hugging Face rotate_half convention."""
        inv_freq = 1.0 / (self.theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd))
        ang = np.outer(positions, inv_freq)
        cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
        half = self.hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def layer(self, l, x):
        """One block over a whole sequence x [T, h] at positions 0..T-1."""
        p = f"model.layers.{l}"
        T = x.shape[0]
        pos = np.arange(T)
        n1 = self.rmsnorm(x, f"{p}.input_layernorm.weight")
        q = self.bitlinear(f"{p}.self_attn.q_proj.weight", n1).reshape(T, self.n_heads, self.hd)
        k = self.bitlinear(f"{p}.self_attn.k_proj.weight", n1).reshape(T, self.n_kv, self.hd)
        v = self.bitlinear(f"{p}.self_attn.v_proj.weight", n1).reshape(T, self.n_kv, self.hd)
        q, k = self.rope(q, pos), self.rope(k, pos)
        rep = self.n_heads // self.n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.hd)
        scores = np.where(np.tril(np.ones((T, T), dtype=bool))[None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hts,shd->thd", scores, v).reshape(T, self.n_heads * self.hd)
        att = self.sub_norm(att, p, "attn")
        h = x + self.bitlinear(f"{p}.self_attn.o_proj.weight", att)
        n2 = self.rmsnorm(h, f"{p}.post_attention_layernorm.weight")
        g = self.bitlinear(f"{p}.mlp.gate_proj.weight", n2)
        u = self.bitlinear(f"{p}.mlp.up_proj.weight", n2)
        m = self.sub_norm(self.activation(g) * u, p, "ffn")
        return h + self.bitlinear(f"{p}.mlp.down_proj.weight", m)

    def forward(self, tokens, hidden=None):
        """Logits [T, vocab]; appends each layer's input to `hidden` if given."""
        x = self.t["model.embed_tokens.weight"][np.asarray(tokens)]
        for l in range(self.n_layers):
            if hidden is not None:
                hidden.append(x)
            x = self.layer(l, x)
        x = self.rmsnorm(x, "model.norm.weight")
        out = self.t["model.embed_tokens.weight"] if self.tied else self.t["lm_head.weight"]
        return x @ out.T


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def rows(a, digits=9):
    return [[float(f"{v:.{digits}g}") for v in r] for r in np.atleast_2d(a)]


def bitlinear_probe(ref, rng):
    """A layer-0 q_proj input whose int8 quantization has no value near a rounding boundary,
    so any correct implementation (f32 or f64) must produce the same xq and the same ints."""
    name = "model.layers.0.self_attn.q_proj.weight"
    while True:
        x = f32(rng.standard_normal(ref.h))
        s_x = 127.0 / np.abs(x).max()
        frac = np.abs(x * s_x - np.floor(x * s_x) - 0.5)
        if frac.min() > 1e-3:
            break
    xq, s_x = ref.quantize(x[None])
    wq, _ = ref.ternary(name)
    dot = (xq @ wq.T).astype(np.int64)[0]
    y = ref.scaled(name, dot, s_x[0, 0])
    return {
        "tensor": "blk.0.attn_q",
        "x": [float(v) for v in x],
        "xq": [int(v) for v in xq[0]],
        "dot": [int(v) for v in dot],
        "y": [float(v) for v in y],
    }


def write_golden(fixture, out, digits=9):
    """Writes FIXTURE's golden.json to `out`; `digits` significant digits for the logits
    (the teacher-forced layers keep 9, so that each input is exactly its float32)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(fixture, "tokenizer.json"))
    tokens = tok.encode(PROMPT).ids
    assert len(tokens) >= 16, len(tokens)
    ref = Reference(fixture)

    hidden = []
    logits = ref.forward(tokens, hidden)
    ref.act_quant = False
    logits_noq = ref.forward(tokens)
    ref.act_quant = True

    # Teacher-forced layer pairs: input rounded to f32 (what a runtime is handed), output in f64.
    layers = []
    for l, x in enumerate(hidden):
        x = f32(x)
        layers.append({"input": rows(x), "output": rows(ref.layer(l, x))})

    seq = list(tokens)
    for _ in range(GREEDY_STEPS):
        seq.append(int(np.argmax(ref.forward(seq)[-1])))

    golden = {
        "about": "scripts/reference.py (numpy float64) on this fixture's Hugging Face checkpoint",
        "prompt": PROMPT,
        "tokens": tokens,
        "logits": rows(logits, digits),
        "logits_no_act_quant": rows(logits_noq, digits),
        "greedy": seq[len(tokens):],
        "layers": layers,
        "bitlinear": bitlinear_probe(ref, np.random.default_rng(0)),
    }
    with open(out, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    top = np.argmax(logits, axis=-1)
    print(f"wrote {out}: {len(tokens)} tokens, argmax {top[:8].tolist()}..., greedy {golden['greedy'][:8]}...")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture")
    ap.add_argument("-o", "--output")
    ap.add_argument("--digits", type=int, default=9, help="significant digits of the stored logits")
    args = ap.parse_args()
    write_golden(args.fixture, args.output or os.path.join(args.fixture, "golden.json"), args.digits)


if __name__ == "__main__":
    main()
