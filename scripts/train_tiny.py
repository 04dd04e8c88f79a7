#!/usr/bin/env python3
"""Train a small BitNet b1.58 model on Jane Austen with quantization-aware training.

The architecture is 1bitLLM's BitnetForCausalLM exactly: RMSNorm, half-rotation RoPE,
BitLinear q/k/v/o and gate/up/down with straight-through estimators (per-tensor absmean
ternary weights, per-token absmax int8 activations), `inner_attn_ln` before o_proj,
`ffn_layernorm` before down_proj, SiLU gate, tied output. The last 2% of paragraphs of
every novel are held out (scripts/corpus.py) and never trained on.

Writes a Hugging Face checkpoint folder (config.json, model.safetensors F32 with 1bitLLM
tensor names, tokenizer.json, generation_config.json), the held-out text, and
reference.json: PyTorch (eval mode) outputs for a few prompts and the held-out
perplexity, which `cargo test` compares tern against.

Deterministic: fixed seeds, step-based schedule, one thread.
Development dependency only (pip install torch numpy tokenizers safetensors).

  python3 scripts/train_tiny.py -o fixtures/austen-tiny --steps 1700
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import make_tokenizer  # noqa: E402
import st  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Elizabeth was",
    "\"My dear Mr. Bennet,\" said his lady to him one day,",
    "The weather was",
]
BOS = 1


# --- the model ---------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def weight_quant(w):
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1) / s


def activation_quant(x):
    s = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127) / s


class BitLinear(nn.Linear):
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)

    def forward(self, x):
        xq = x + (activation_quant(x) - x).detach()
        wq = self.weight + (weight_quant(self.weight) - self.weight).detach()
        return F.linear(xq, wq)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.nh = c["num_attention_heads"]
        self.hd = d // self.nh
        eps = c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(d, eps)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (BitLinear(d, d) for _ in range(4))
        self.inner_attn_ln = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.gate_proj, self.up_proj = BitLinear(d, f), BitLinear(d, f)
        self.down_proj = BitLinear(f, d)
        self.ffn_layernorm = RMSNorm(f, eps)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        n = self.input_layernorm(x)
        q, k, v = (p(n).view(B, T, self.nh, self.hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.o_proj(self.inner_attn_ln(a))
        n = self.post_attention_layernorm(x)
        m = F.silu(self.gate_proj(n)) * self.up_proj(n)
        return x + self.down_proj(self.ffn_layernorm(m))


class Bitnet(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        hd = c["hidden_size"] // c["num_attention_heads"]
        self.register_buffer(
            "inv_freq", 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)), persistent=False
        )

    def forward(self, ids):
        T = ids.shape[1]
        ang = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
        emb = torch.cat([ang, ang], dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) @ self.embed_tokens.weight.T


# --- data ----------------------------------------------------------------------------------
def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def windows(ids, ctx):
    """The perplexity windowing tern uses: non-overlapping chunks of ctx-1 tokens, each
    preceded by BOS; every token of the text is scored once."""
    step = ctx - 1
    return [ids[i : i + step] for i in range(0, len(ids), step)]


@torch.no_grad()
def perplexity(model, ids, ctx):
    nll, n = 0.0, 0
    for chunk in windows(ids, ctx):
        inp = torch.tensor([[BOS] + chunk[:-1]])
        logits = model(inp)[0].double()
        nll += F.cross_entropy(logits, torch.tensor(chunk), reduction="sum").item()
        n += len(chunk)
    return nll / n, n


def save_checkpoint(model, c, out, tokenizer_path):
    sd = model.state_dict()
    hd = c["hidden_size"] // c["num_attention_heads"]
    entries = []
    for name, t in sd.items():
        entries.append((f"model.{name}", "F32", tuple(t.shape), (lambda t=t: t.detach().numpy().astype(np.float32))))
    inv = model.inv_freq.numpy()
    for l in range(c["num_hidden_layers"]):
        entries.append((f"model.layers.{l}.self_attn.rotary_emb.inv_freq", "F32", (hd // 2,), lambda: inv))
    # 1bitLLM names: attention/MLP projections live under self_attn./mlp.
    renamed = []
    for name, dt, shape, fn in entries:
        for p in ("q_proj", "k_proj", "v_proj", "o_proj", "inner_attn_ln", "rotary_emb"):
            name = name.replace(f".{p}.", f".self_attn.{p}.")
        for p in ("gate_proj", "up_proj", "down_proj", "ffn_layernorm"):
            name = name.replace(f".{p}.", f".mlp.{p}.")
        renamed.append((name, dt, shape, fn))
    renamed.sort(key=lambda e: e[0])
    st.write(os.path.join(out, "model.safetensors"), renamed)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.7, "top_k": 40,
                   "top_p": 0.95, "repetition_penalty": 1.1}, f, indent=2)
    os.replace(tokenizer_path, os.path.join(out, "tokenizer.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--steps", type=int, default=1700)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    os.makedirs(args.output, exist_ok=True)

    novels = list(corpus.novels())
    tok_path = os.path.join(args.output, "tokenizer.tmp.json")
    spec = make_tokenizer.train([p for _, tr, _ in novels for p in tr], args.vocab)
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_path)
    train_ids = []
    for _, tr, _ in novels:
        train_ids += encode(tok, "\n".join(tr))
    heldout_text = "\n".join(p for _, _, ho in novels for p in ho) + "\n"
    with open(os.path.join(args.output, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(heldout_text)
    heldout_ids = encode(tok, heldout_text)
    print(f"train tokens {len(train_ids)}, held-out tokens {len(heldout_ids)}", flush=True)

    c = {
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads,
        "max_position_embeddings": args.ctx,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "weight_bits": 1,
        "input_bits": 8,
    }
    model = Bitnet(c)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.tensor(train_ids)
    g = torch.Generator().manual_seed(args.seed)
    warmup = max(1, args.steps // 20)
    t0 = time.time()
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - args.ctx, (args.batch,), generator=g)
        tgt = torch.stack([data[s : s + args.ctx] for s in starts])
        inp = torch.cat([torch.full((args.batch, 1), BOS), tgt[:, :-1]], dim=1)
        loss = F.cross_entropy(model(inp).reshape(-1, args.vocab), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
    train_secs = time.time() - t0

    model.eval()
    nats, n = perplexity(model, heldout_ids, args.ctx)
    print(f"held-out: {nats:.4f} nats/token, ppl {math.exp(nats):.3f} over {n} tokens", flush=True)
    save_checkpoint(model, c, args.output, tok_path)

    prompts = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok.encode(text).ids  # with BOS, as the post-processor adds it
            seq = list(ids)
            logits = model(torch.tensor([seq]))[0, -1]
            top = torch.topk(logits, 5)
            for _ in range(32):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            cont = seq[len(ids):]
            prompts.append({
                "prompt": text,
                "ids": ids,
                "top5_ids": top.indices.tolist(),
                "top5_logits": [float(v) for v in top.values],
                "greedy": cont,
                "greedy_text": tok.decode(cont),
            })
            print(f"{text!r} -> {tok.decode(cont)!r}", flush=True)
    ref = {
        "about": "PyTorch (eval mode, float32) outputs of scripts/train_tiny.py's model",
        "train_seconds": round(train_secs, 1),
        "steps": args.steps,
        "final_train_loss": round(loss.item(), 4),
        "heldout": {
            "file": "heldout.txt",
            "ctx": args.ctx,
            "windowing": "tokens of the whole file (no BOS), non-overlapping chunks of ctx-1, each preceded by BOS; every token scored once",
            "tokens": n,
            "nats_per_token": nats,
            "ppl": math.exp(nats),
        },
        "prompts": prompts,
    }
    with open(os.path.join(args.output, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
