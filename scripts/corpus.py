"""The Austen corpus and its fixed train / held-out split.

One paragraph per line (see ../shared/corpus/README.md). The last 2% of the
paragraphs of each novel are held out: nothing is ever trained on them, and
they are the text for perplexity.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "corpus", "austen"))
HELD_OUT_FRACTION = 0.02


def novels(corpus_dir=CORPUS_DIR):
    """Yield (name, train_paragraphs, held_out_paragraphs) per novel, in name order."""
    for name in sorted(os.listdir(corpus_dir)):
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
            paras = [line.strip() for line in f if line.strip()]
        n_held = max(1, round(len(paras) * HELD_OUT_FRACTION))
        yield name[:-4], paras[:-n_held], paras[-n_held:]
