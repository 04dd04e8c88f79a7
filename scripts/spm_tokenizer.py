#!/usr/bin/env python3
"""A SentencePiece tokenizer.model for a synthetic checkpoint folder, trained on the corpus's .txt files.

llama.cpp's convert_hf_to_gguf.py requires one for the Llama architecture; its content does not
affect speed. Used by bench_vs_llama.sh and bench_vs_peers.sh:

  spm_tokenizer.py CORPUS_DIR OUT/tokenizer.model
"""
import glob
import io
import sys

import sentencepiece as spm

text = "\n".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob(sys.argv[1] + "/*.txt")))
model = io.BytesIO()
spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=8000,
                               model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
open(sys.argv[2], "wb").write(model.getvalue())
