#!/usr/bin/env python3
"""Synthetic checkpoints in the two published pre-packed BitNet layouts, with goldens from
Hugging Face transformers itself (the independent oracle of issue 24).

  fixtures/bitnet-2b-tiny/  BitNetForCausalLM as microsoft/bitnet-b1.58-2B-4T, scaled down:
                            linear_class "autobitlinear", offline (y = x.W * weight_scale),
                            relu2, attn_sub_norm / ffn_sub_norm, tied embeddings,
                            hidden 320, intermediate 864, 3 layers, 10 / 5 heads (head_dim 32)
  fixtures/falcon3-tiny/    LlamaForCausalLM as tiiuae/Falcon3-*-1.58bit, scaled down:
                            quant_method "bitnet" alone (linear_class "bitlinear":
                            y = x.W / weight_scale), SiLU, no sub-norms, untied bf16 lm_head,
                            explicit head_dim 48 with 8 / 4 heads (8 x 48 != hidden 320)

Issue 30 (ISSUE30 below; transformers' goldens only: the numpy reference is run against them
and its agreement printed, but its golden.json is not stored, to keep each folder near 2 MB):

  fixtures/bitnet-2b-bf16-tiny/          BitNetForCausalLM with bf16 master linears quantized at
                                         every call (autobitlinear, quantization_mode "online"),
                                         as microsoft/bitnet-b1.58-2B-4T-bf16
  fixtures/bitnet-rmsnorm-bias-tiny/     LlamaForCausalLM, bitlinear (bias after the scale),
                                         use_rms_norm with rms_norm_eps 1e-5, attention and mlp bias
  fixtures/bitnet-2b-rmsnorm-bias-tiny/  BitNetForCausalLM, offline autobitlinear (bias before the
                                         multiplication by weight_scale), use_rms_norm, attention bias
  fixtures/bitnet-online-rmsnorm-bias-tiny/  LlamaForCausalLM, autobitlinear online (float masters,
                                         bias after the product), use_rms_norm, attention and mlp bias
  fixtures/falcon-e-tiny/                Falcon-E-1B's head ratios (16 q heads on 2 kv heads,
                                         head_dim = hidden / heads), bitlinear, ChatML template

Pre-packed ones: every BitLinear weight is U8 [out/4, in] packed by transformers' own `pack_weights`
from a random ternary matrix, with a BF16 [1] `weight_scale`; norms, embeddings and
lm_head are BF16. Each folder gets config.json, generation_config.json, model.safetensors,
a Llama-3-style byte-level BPE tokenizer.json trained on the Austen corpus (real special
token names, <|begin_of_text|> prepended by the post-processor), tokenizer_config.json
with the model's published chat template, and two goldens:

  hf_golden.json  transformers' AutoModelForCausalLM on CPU in float32: logits at every
                  prompt position, the same with activation quantization patched to the
                  identity, 32 greedy tokens (argmax with full recompute), and a rendered
                  chat-template example
  golden.json     scripts/reference.py (numpy float64, from the formulas, own U8 unpacking)

and the two are cross-checked (argmax at every position, max |dlogit| / max |logit|,
greedy). Everything is seeded: running it again gives the same bytes.

Regenerate (CPU; PyPI torch transformers accelerate safetensors numpy tokenizers):

  python3 scripts/make_hf_fixtures.py            # every fixture, then the cross-check
  python3 scripts/make_hf_fixtures.py falcon-e-tiny   # one

Made with torch 2.15.0, transformers 5.25.0, accelerate 1.16.0, safetensors 0.8.0,
numpy 2.4.6, tokenizers 0.23.3 (each hf_golden.json records its versions).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
import reference  # noqa: E402

FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

# --- published facts, scaled down ------------------------------------------------------
# Special tokens of Llama 3 (ids 128000.. there; here right after the learned vocabulary).
BOS, EOS, SH, EH, EOT = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
SPECIALS = [BOS, EOS, SH, EH, EOT]
MERGES = 250  # 256 byte tokens + 250 merges + 5 specials = 511 (odd) tokens
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# chat_template of microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json
BITNET_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
# chat_template of tiiuae's Falcon3 instruct models (Falcon3-*-Instruct[-1.58bit])
FALCON3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who is Mr. Darcy?"},
    {"role": "assistant", "content": "A gentleman of Derbyshire."},
    {"role": "user", "content": "  And Elizabeth?  "},
]

SHAPE = dict(hidden=320, inter=864, layers=3)
FAMILIES = {
    "bitnet-2b-tiny": dict(
        seed=7,
        heads=10,
        kv=5,
        head_dim=None,  # 2B-4T's config has none: hidden / heads = 32
        act="relu2",
        sub_norms=True,
        tied=True,
        linear_class="autobitlinear",
        # mean|W| of the masters a packed model was made from: the scale multiplies. Large
        # enough that the layers, not the tied embedding's echo of the input token, decide
        # the greedy continuation (at half of this it repeats one token); twice this, and
        # one int8 rounding flip moves the logits by 0.3. The seed was picked for wide
        # top-2 margins (>= 0.09 at every prompt position and greedy step).
        scale=(0.04, 0.12),
        eos_token="<|eot_id|>",
        chat_template=BITNET_CHAT_TEMPLATE,
    ),
    "falcon3-tiny": dict(
        seed=3003,
        heads=8,
        kv=4,
        head_dim=48,
        act="silu",
        sub_norms=False,
        tied=False,
        linear_class="bitlinear",
        # 1 / mean|W| of the masters: the scale divides
        scale=(15.0, 50.0),
        eos_token=EOS,
        chat_template=FALCON3_CHAT_TEMPLATE,
    ),
}
# Issue 30: master weights (online AutoBitLinear), BitNetQuantConfig's use_rms_norm and
# biases, and a Falcon-E-shaped checkpoint. Smaller shapes where the weights are bf16 masters,
# so that each folder stays under 2 MB. Goldens from transformers only (hf_golden.json).
ISSUE30 = {
    # microsoft/bitnet-b1.58-2B-4T-bf16's layout: BitNetForCausalLM with bf16 master linears,
    # quantized at every call (linear_class "autobitlinear", quantization_mode "online").
    "bitnet-2b-bf16-tiny": dict(
        seed=30_1, shape=dict(hidden=160, inter=432, layers=2), heads=10, kv=5, head_dim=None,
        arch="bitnet", act="relu2", sub_norms=True, tied=True, linear_class="autobitlinear",
        mode="online", masters=True, scale=(0.05, 0.15), use_rms_norm=False, bias=False,
        eos_token="<|eot_id|>", chat_template=BITNET_CHAT_TEMPLATE,
    ),
    # Llama architecture, BitLinear (bias added after the scale), an RMSNorm inside every
    # BitLinear with a non-default eps, biases on every projection.
    "bitnet-rmsnorm-bias-tiny": dict(
        seed=30_2, shape=dict(hidden=320, inter=864, layers=2), heads=8, kv=4, head_dim=48,
        arch="llama", act="silu", sub_norms=False, tied=False, linear_class="bitlinear",
        mode="offline", masters=False, scale=(15.0, 50.0), use_rms_norm=True, rms_norm_eps=1e-5,
        bias=True, bias_sd=0.03, eos_token=EOS, chat_template=FALCON3_CHAT_TEMPLATE,
    ),
    # BitNetForCausalLM, offline AutoBitLinear (bias added before the multiplication by
    # weight_scale), use_rms_norm with the default eps, attention_bias (BitNetMLP has none).
    "bitnet-2b-rmsnorm-bias-tiny": dict(
        seed=30_31, shape=dict(hidden=160, inter=432, layers=2), heads=10, kv=5, head_dim=None,
        arch="bitnet", act="relu2", sub_norms=True, tied=True, linear_class="autobitlinear",
        mode="offline", masters=False, scale=(0.04, 0.12), use_rms_norm=True, bias=True, bias_sd=0.3,
        eos_token="<|eot_id|>", chat_template=BITNET_CHAT_TEMPLATE,
    ),
    # Llama architecture, float master weights quantized online (AutoBitLinear: the bias after
    # the ternary product, no weight_scale), use_rms_norm, attention and mlp bias.
    "bitnet-online-rmsnorm-bias-tiny": dict(
        seed=30_5, shape=dict(hidden=160, inter=432, layers=2), heads=10, kv=5, head_dim=16,
        arch="llama", act="silu", sub_norms=False, tied=False, linear_class="autobitlinear",
        mode="online", masters=True, scale=(0.05, 0.15), use_rms_norm=True, bias=True, bias_sd=0.03,
        eos_token=EOS, chat_template=FALCON3_CHAT_TEMPLATE,
    ),
    # tiiuae/Falcon-E-1B's shape, scaled down: LlamaForCausalLM, bitlinear, packed U8,
    # no per-linear norms, 16 query heads on 2 KV heads (8:1) with head_dim = hidden / heads,
    # intermediate = 4.5 x hidden, rope_theta 1e6, rms eps 1e-5, untied lm_head, and a
    # ChatML chat template with <|im_start|> / <|im_end|>.
    "falcon-e-tiny": dict(
        seed=30_4, shape=dict(hidden=320, inter=1440, layers=2), heads=16, kv=2, head_dim=20,
        arch="llama", act="silu", sub_norms=False, tied=False, linear_class="bitlinear",
        mode="offline", masters=False, scale=(15.0, 50.0), use_rms_norm=False, bias=False,
        rope_theta=1000000.0, rms_norm_eps=1e-5,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        eos_token="<|end_of_text|>", chat_template=None,  # set below
    ),
}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ISSUE30["falcon-e-tiny"]["chat_template"] = CHATML_TEMPLATE
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


# --- tokenizer ---------------------------------------------------------------------------
def train_tokenizer(path, specials=SPECIALS):
    """Llama-3-style byte-level BPE: split regex + ByteLevel, ignore_merges, specials at the end
    (the first special is the BOS the post-processor prepends)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + MERGES,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    lines = [p for _, train_part, _ in corpus.novels() for p in train_part]
    tok.train_from_iterator(lines, trainer=trainer)
    assert tok.get_vocab_size() == 256 + MERGES, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    BOS = specials[0]  # noqa: N806
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0",
            pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
            special_tokens=[(BOS, bos)],
        ),
    ])
    tok.save(path)
    ids = {s: tok.token_to_id(s) for s in specials}
    sample = "It is a truth universally acknowledged — naïve, 42!\n"
    enc = tok.encode(sample)
    assert enc.ids[0] == ids[BOS] and tok.decode(enc.ids, skip_special_tokens=True) == sample
    return tok, ids


def tokenizer_config(ids, fam):
    specials = fam.get("specials", SPECIALS)
    decoder = {
        str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
        for s in specials
    }
    return {
        "added_tokens_decoder": decoder,
        "bos_token": specials[0],
        "chat_template": fam["chat_template"],
        "clean_up_tokenization_spaces": True,
        "eos_token": fam["eos_token"],
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# --- config ------------------------------------------------------------------------------
def config_json(name, fam, ids, vocab):
    h = SHAPE["hidden"]
    if name == "bitnet-2b-tiny":
        return {
            "architectures": ["BitNetForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[EOS],
            "hidden_act": "relu2",
            "hidden_size": h,
            "initializer_range": 0.02,
            "intermediate_size": SHAPE["inter"],
            "max_position_embeddings": 256,
            "model_type": "bitnet",
            "rms_norm_eps": 1e-05,
            "num_attention_heads": fam["heads"],
            "num_hidden_layers": SHAPE["layers"],
            "num_key_value_heads": fam["kv"],
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": vocab,
            "quantization_config": {
                "quant_method": "bitnet",
                "linear_class": "autobitlinear",
                "quantization_mode": "offline",
            },
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "eos_token_id": ids[EOS],
        "head_dim": fam["head_dim"],
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": SHAPE["inter"],
        "is_bitnet_config": True,
        "max_position_embeddings": 256,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": fam["heads"],
        "num_hidden_layers": SHAPE["layers"],
        "num_key_value_heads": fam["kv"],
        "pretraining_tp": 1,
        "quantization_config": {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"},
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000042,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab,
    }


def config_json_issue30(fam, ids, vocab):
    sh, specials = fam["shape"], fam.get("specials", SPECIALS)
    q = {"quant_method": "bitnet", "linear_class": fam["linear_class"], "quantization_mode": fam["mode"]}
    if fam["use_rms_norm"]:
        q["use_rms_norm"] = True
        if "rms_norm_eps" in fam and fam["arch"] == "llama":
            q["rms_norm_eps"] = fam["rms_norm_eps"]
    c = {
        "architectures": ["BitNetForCausalLM" if fam["arch"] == "bitnet" else "LlamaForCausalLM"],
        "attention_bias": fam["bias"],
        "attention_dropout": 0.0,
        "bos_token_id": ids[specials[0]],
        "eos_token_id": ids[specials[1]],
        "hidden_act": fam["act"],
        "hidden_size": sh["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": sh["inter"],
        "max_position_embeddings": 256,
        "model_type": fam["arch"],
        "num_attention_heads": fam["heads"],
        "num_hidden_layers": sh["layers"],
        "num_key_value_heads": fam["kv"],
        "rms_norm_eps": 1e-05 if fam["arch"] == "bitnet" else 1e-06,
        "rope_theta": fam.get("rope_theta", 500000.0),
        "tie_word_embeddings": fam["tied"],
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab,
        "quantization_config": q,
    }
    if fam["arch"] == "llama":
        c.update({"head_dim": fam["head_dim"], "mlp_bias": fam["bias"], "rope_scaling": None})
        if "rms_norm_eps" in fam and not fam["use_rms_norm"]:
            c["rms_norm_eps"] = fam["rms_norm_eps"]
    return c


def generation_config(name, ids):
    if name == "bitnet-2b-tiny":  # 2B-4T: generation stops at end_of_text or eot_id
        return {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids[EOT]]}
    return {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS]}  # Falcon3: one id


# --- weights -----------------------------------------------------------------------------
def make_weights(fam, vocab):
    """{name: torch tensor} in the published dtypes; ternary weights packed by transformers."""
    import torch
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    rng = np.random.default_rng(fam["seed"])
    sh = fam.get("shape", SHAPE)
    h, inter = sh["hidden"], sh["inter"]
    hd = fam["head_dim"] or h // fam["heads"]
    q, kv = fam["heads"] * hd, fam["kv"] * hd
    shapes = {
        "self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }

    def bf16(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).to(torch.bfloat16)

    def norm(n):
        return bf16(rng.uniform(0.8, 1.2, n))

    out = {"model.embed_tokens.weight": bf16(rng.standard_normal((vocab, h)) * 0.25)}
    lo, hi = fam["scale"]
    for l in range(sh["layers"]):
        p = f"model.layers.{l}"
        out[f"{p}.input_layernorm.weight"] = norm(h)
        out[f"{p}.post_attention_layernorm.weight"] = norm(h)
        if fam["sub_norms"]:
            out[f"{p}.self_attn.attn_sub_norm.weight"] = norm(h)
            out[f"{p}.mlp.ffn_sub_norm.weight"] = norm(inter)
        for lin in LINEARS:
            if fam.get("use_rms_norm"):  # the RMSNorm inside the BitLinear, over its input
                out[f"{p}.{lin}.rms_norm.weight"] = norm(shapes[lin][1])
            if fam.get("bias") and (lin.startswith("self_attn") or fam["arch"] == "llama"):
                out[f"{p}.{lin}.bias"] = bf16(rng.standard_normal(shapes[lin][0]) * fam["bias_sd"])
            if fam.get("masters"):  # float master weights, ternarized by transformers at every call
                out[f"{p}.{lin}.weight"] = bf16(rng.standard_normal(shapes[lin]) * rng.uniform(lo, hi))
                continue
            w = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=shapes[lin], p=[0.3, 0.4, 0.3])
            packed = pack_weights(torch.from_numpy(w.copy()))
            assert packed.dtype == torch.uint8 and tuple(packed.shape) == (w.shape[0] // 4, w.shape[1])
            back = unpack_weights(packed, dtype=torch.float32).numpy()
            assert np.array_equal(back, w), f"transformers' unpack_weights does not invert pack_weights on {lin}"
            assert np.array_equal(reference.unpack_ternary(packed.numpy()), w), f"reference unpack on {lin}"
            out[f"{p}.{lin}.weight"] = packed
            out[f"{p}.{lin}.weight_scale"] = bf16([rng.uniform(lo, hi)])
    out["model.norm.weight"] = norm(h)
    if not fam["tied"]:
        out["lm_head.weight"] = bf16(rng.standard_normal((vocab, h)) * 0.25)
    return out


def check_docstring_example():
    """unpack_weights' docstring example, through transformers and through the reference."""
    import torch
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], dtype=np.uint8)
    want = np.array([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]])
    assert np.array_equal(unpack_weights(torch.from_numpy(packed), dtype=torch.float32).numpy(), want)
    assert np.array_equal(reference.unpack_ternary(packed), want)
    assert np.array_equal(pack_weights(torch.from_numpy(want.astype(np.int8))).numpy(), packed)


# --- goldens from transformers -------------------------------------------------------------
def hf_goldens(folder, tokens):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import bitnet

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    # transformers 5.25 leaves the norms and embeddings of a pre-packed autobitlinear checkpoint
    # in BF16 despite dtype=float32 (every `weight` goes through BitNetDeserialize, so
    # get_new_dtype keeps the checkpoint's dtype) and then fails on BF16 x F32; cast them
    # (exactly: they are BF16 values) so that the whole forward runs in float32.
    left = sorted({str(t.dtype) for t in model.state_dict().values() if t.is_floating_point()} - {"torch.float32"})
    torch.nn.Module.float(model).eval()  # PreTrainedModel.float refuses quantized models
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (bitnet.BitLinear, bitnet.AutoBitLinear))})
    assert len(kinds) == 1, kinds

    def logits_of(seq):
        with torch.no_grad():
            return model(torch.tensor([seq])).logits[0].double().numpy()

    def greedy_of():
        seq = list(tokens)
        for _ in range(reference.GREEDY_STEPS):
            seq.append(int(np.argmax(logits_of(seq)[-1])))
        return seq[len(tokens):]

    logits, greedy = logits_of(tokens), greedy_of()
    with torch.no_grad():
        gen = model.generate(torch.tensor([tokens]), do_sample=False, max_new_tokens=reference.GREEDY_STEPS,
                             min_new_tokens=reference.GREEDY_STEPS)[0, len(tokens):].tolist()

    # Activation quantization off: ActQuant (AutoBitLinear) and BitLinear.activation_quant
    # become the identity (x, scale 1); the ternary weights and weight_scale stay.
    saved_act, saved_bl = bitnet.ActQuant, bitnet.BitLinear.activation_quant

    class NoActQuant:
        @staticmethod
        def apply(x):
            return x

    bitnet.ActQuant = NoActQuant
    bitnet.BitLinear.activation_quant = lambda self, x, num_bits=8: (x, torch.ones_like(x[..., :1]))
    try:
        logits_noq = logits_of(tokens)
    finally:
        bitnet.ActQuant, bitnet.BitLinear.activation_quant = saved_act, saved_bl

    # The same model in float64: with no float32 rounding before each int8 activation
    # rounding, transformers meets the numpy reference to the stored digits.
    torch.nn.Module.double(model)
    logits64, greedy64 = logits_of(tokens), greedy_of()

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok(reference.PROMPT)["input_ids"] == list(tokens), "AutoTokenizer and tokenizers disagree"
    rendered = tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    return {
        "about": "transformers AutoModelForCausalLM.from_pretrained(folder, dtype=float32) on CPU "
                 f"({kinds[0]}; {', '.join(left) or 'no'} tensors left by the loader cast to float32 "
                 "with torch.nn.Module.float); logits_no_act_quant with the activation quantization patched to the "
                 "identity; greedy = argmax with full recompute (model.generate with the KV cache "
                 f"{'agrees' if gen == greedy else 'DISAGREES'}); logits_float64 / greedy_float64: the "
                 "same model cast to float64 (torch.nn.Module.double) after loading",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "prompt": reference.PROMPT,
        "tokens": list(tokens),
        "logits": reference.rows(logits, 7),
        "logits_no_act_quant": reference.rows(logits_noq, 7),
        "greedy": greedy,
        "greedy_text": tok.decode(greedy),
        "logits_float64": reference.rows(logits64, 7),
        "greedy_float64": greedy64,
        "chat_example": {"messages": CHAT_MESSAGES, "add_generation_prompt": True, "rendered": rendered},
    }, gen == greedy


def write_json(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, separators=(",", ":"), ensure_ascii=False)
        else:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def make_fixture(name):
    import torch
    from safetensors.torch import save_file

    fam = FAMILIES.get(name) or ISSUE30[name]
    folder = os.path.join(FIXTURES, name)
    os.makedirs(folder, exist_ok=True)
    tok, ids = train_tokenizer(os.path.join(folder, "tokenizer.json"), fam.get("specials", SPECIALS))
    vocab = tok.get_vocab_size()
    assert vocab % 2 == 1, vocab
    write_json(os.path.join(folder, "tokenizer_config.json"), tokenizer_config(ids, fam))
    if name in ISSUE30:
        specials = fam.get("specials", SPECIALS)
        write_json(os.path.join(folder, "config.json"), config_json_issue30(fam, ids, vocab))
        eos = [ids[specials[1]], ids[EOT]] if fam["arch"] == "bitnet" else ids[specials[1]]
        write_json(os.path.join(folder, "generation_config.json"), {"bos_token_id": ids[specials[0]], "eos_token_id": eos})
    else:
        write_json(os.path.join(folder, "config.json"), config_json(name, fam, ids, vocab))
        write_json(os.path.join(folder, "generation_config.json"), generation_config(name, ids))
    weights = make_weights(fam, vocab)
    save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    del weights, torch  # the model is read back from disk only

    tokens = tok.encode(reference.PROMPT).ids
    hf, generate_agrees = hf_goldens(folder, tokens)
    write_json(os.path.join(folder, "hf_golden.json"), hf, compact=True)
    if name not in ISSUE30:  # their reference goldens are not stored (size); see hf_facts
        reference.write_golden(folder, os.path.join(folder, "golden.json"), digits=7)
    return hf, generate_agrees


def cross_check(name):
    """numpy reference vs transformers on one fixture; returns printable facts."""
    folder = os.path.join(FIXTURES, name)
    with open(os.path.join(folder, "golden.json")) as f:
        ref = json.load(f)
    with open(os.path.join(folder, "hf_golden.json")) as f:
        hf = json.load(f)
    assert ref["tokens"] == hf["tokens"]
    out = {}
    for key in ("logits", "logits_no_act_quant"):
        a, b = np.array(ref[key]), np.array(hf[key])
        out[key] = dict(
            argmax_agree=f"{int((a.argmax(-1) == b.argmax(-1)).sum())}/{len(a)}",
            max_abs=float(np.abs(a - b).max()),
            rel=float(np.abs(a - b).max() / np.abs(b).max()),
        )
    a, q, nq = np.array(ref["logits"]), np.array(hf["logits"]), np.array(hf["logits_no_act_quant"])
    out["ref_vs_hf_noq_max_abs"] = float(np.abs(a - nq).max())
    top2 = np.sort(q, axis=-1)[:, -2:]
    out["min_top2_margin_prompt"] = float((top2[:, 1] - top2[:, 0]).min())
    f64 = np.array(hf["logits_float64"])
    out["logits_vs_hf_float64"] = dict(
        argmax_agree=f"{int((a.argmax(-1) == f64.argmax(-1)).sum())}/{len(a)}", max_abs=float(np.abs(a - f64).max()))
    for key in ("greedy", "greedy_float64"):
        out[key + "_match"] = f"{sum(x == y for x, y in zip(ref['greedy'], hf[key]))}/{len(hf[key])}"
        out[key + "_first_diff"] = next((i for i, (x, y) in enumerate(zip(ref["greedy"], hf[key])) if x != y), None)
    return out


def hf_facts(name):
    """What the oracle of an issue-30 fixture says about itself: the numpy reference against it,
    its float32 vs float64 runs, and the distance between the quantized and unquantized logits."""
    with open(os.path.join(FIXTURES, name, "hf_golden.json")) as f:
        hf = json.load(f)
    q, nq, f64 = (np.array(hf[k]) for k in ("logits", "logits_no_act_quant", "logits_float64"))
    top2 = np.sort(q, axis=-1)[:, -2:]
    # The numpy reference (its golden is not stored: size), against transformers in float64.
    ref = reference.Reference(os.path.join(FIXTURES, name))
    r = ref.forward(hf["tokens"])
    seq = list(hf["tokens"])
    for _ in range(reference.GREEDY_STEPS):
        seq.append(int(np.argmax(ref.forward(seq)[-1])))
    greedy_ref = seq[len(hf["tokens"]):]
    return dict(
        reference_vs_hf_float64_argmax=f"{int((r.argmax(-1) == f64.argmax(-1)).sum())}/{len(r)}",
        reference_vs_hf_float64_max_abs=float(np.abs(r - f64).max()),
        reference_greedy_vs_hf_float64=f"{sum(x == y for x, y in zip(greedy_ref, hf['greedy_float64']))}/{len(greedy_ref)}",
        argmax_float32_vs_float64=f"{int((q.argmax(-1) == f64.argmax(-1)).sum())}/{len(q)}",
        max_abs_float32_vs_float64=float(np.abs(q - f64).max()),
        max_abs_quantized_vs_not=float(np.abs(q - nq).max()),
        min_top2_margin_prompt=float((top2[:, 1] - top2[:, 0]).min()),
        greedy_float32_vs_float64=f"{sum(x == y for x, y in zip(hf['greedy'], hf['greedy_float64']))}/{len(hf['greedy'])}",
        greedy_text=hf["greedy_text"],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(FAMILIES) + list(ISSUE30), help="fixtures to make (default: all)")
    ap.add_argument("--check-only", action="store_true", help="only cross-check the committed goldens")
    args = ap.parse_args()
    if not args.check_only:
        check_docstring_example()
        for name in args.names:
            hf, generate_agrees = make_fixture(name)
            print(f"{name}: {len(hf['tokens'])} tokens, greedy {hf['greedy'][:8]}..., "
                  f"generate() {'agrees' if generate_agrees else 'DISAGREES'} with the argmax loop")
    for name in args.names:
        if name in ISSUE30:
            print(name, json.dumps(hf_facts(name), indent=1))
        else:
            print(name, json.dumps(cross_check(name), indent=1))


if __name__ == "__main__":
    main()
