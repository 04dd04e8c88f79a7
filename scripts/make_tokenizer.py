#!/usr/bin/env python3
"""Train a small byte-fallback BPE tokenizer in the LLaMA layout.

Layout of the result (as in the Llama/1bitLLM tokenizer.json):
  id 0 `<unk>`, 1 `<s>`, 2 `</s>`, ids 3..258 the byte tokens `<0x00>`..`<0xFF>`,
  then the learned merges; normalizer Prepend("▁") + Replace(" ", "▁"), no
  pre-tokenizer, BPE with byte_fallback, a post-processor that puts `<s>` first,
  and the matching decoder.

Training splits on "▁" (Metaspace) so that merges never cross a word boundary;
the saved tokenizer has no pre-tokenizer, exactly like Llama's, and encodes the
same way because no learned merge contains "▁" anywhere but at its start.

Usage: make_tokenizer.py --vocab-size 512 -o fixtures/tokenizer-512.json [TEXT ...]
The default text is the Austen corpus in ../shared/corpus/austen, held-out
paragraphs excluded (see scripts/corpus.py).
"""
import argparse
import json
import os
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
SPECIALS = ["<unk>", "<s>", "</s>"]


def train(lines, vocab_size):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS + BYTE_TOKENS,
        limit_alphabet=100,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    spec = json.loads(tok.to_str())

    # Byte tokens belong to the model vocabulary, not to the added (special) tokens.
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIALS]
    for t in spec["added_tokens"]:
        t["special"] = True
    spec["pre_tokenizer"] = None
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    vocab = spec["model"]["vocab"]
    assert vocab["<unk>"] == 0 and vocab["<s>"] == 1 and vocab["</s>"] == 2, "special ids"
    assert all(vocab[b] == 3 + i for i, b in enumerate(BYTE_TOKENS)), "byte token ids"
    return spec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    lines = [p for _, train_part, _ in corpus.novels() for p in train_part]
    spec = train(lines, args.vocab_size)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)
    # Round-trip check with the saved file, as a user would load it.
    tok = Tokenizer.from_file(args.output)
    sample = "It is a truth universally acknowledged, that a single man — naïve — 42."
    ids = tok.encode(sample).ids
    assert ids[0] == 1, ids
    assert tok.decode(ids, skip_special_tokens=True) == sample, tok.decode(ids)
    print(f"wrote {args.output}: vocab {tok.get_vocab_size()}, sample -> {len(ids)} tokens")


if __name__ == "__main__":
    main()
