"""Type stubs of the tern package (the native half is tern._tern)."""

import os
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, os.PathLike[str]]
_Stop = Union[str, Sequence[str], None]

class TernError(Exception):
    """A bad or corrupt .tern file, a checkpoint the converter refuses, or a failed verify."""

def convert(src_dir: _Path, dst: _Path, output_type: Literal["f16", "f32", "q8"] = "f16") -> None:
    """Converts a Hugging Face BitNet b1.58 checkpoint folder into one .tern file, as tern-convert."""

def verify(path: _Path) -> None:
    """Checks structure, every checksum and padding byte; raises TernError naming the bad tensor."""

class Generation(Iterator[str]):
    """A running generation: an iterator of text pieces that join to the generated text."""

    def __iter__(self) -> "Generation": ...
    def __next__(self) -> str: ...
    @property
    def finish_reason(self) -> Optional[Literal["stop", "length"]]:
        """"stop" (end of sequence or a stop string), "length", or None while running."""
    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt (BOS included)."""
    @property
    def completion_tokens(self) -> Optional[int]:
        """Tokens generated (an end-of-sequence token not counted), or None while running."""
    def cancel(self) -> None:
        """Stops the generation at its next token and ends the iteration."""

class Model:
    """A .tern model, memory-mapped; shared by threads; dropping it unmaps the file."""

    def __init__(self, path: _Path, n_threads: Optional[int] = None, n_ctx: Optional[int] = None) -> None: ...
    @property
    def config(self) -> Dict[str, Any]:
        """The model's config as `tern inspect` shows it."""
    @property
    def path(self) -> str:
        """The path the model was opened from."""
    @property
    def n_vocab(self) -> int:
        """The vocabulary size (logits per position)."""
    @property
    def n_ctx(self) -> int:
        """Positions a prompt and its continuation may use."""
    @property
    def bos_id(self) -> Optional[int]:
        """The beginning-of-sequence token id, or None."""
    @property
    def eos_ids(self) -> List[int]:
        """The end-of-sequence token ids."""
    @property
    def chat_template(self) -> Optional[str]:
        """The chat template stored in the file, or None (chat then uses the plain fallback)."""
    def tokenize(self, text: str, add_bos: bool = True) -> List[int]:
        """Token ids; with add_bos, exactly what `tern tokenize` prints."""
    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids, as the tokenizers library decodes it."""
    def logits(self, ids: Sequence[int], all: bool = True) -> npt.NDArray[np.float32]:
        """float32 [len(ids), n_vocab] (bit-identical to `tern logits --all`); all=False: [n_vocab]."""
    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: _Stop = None,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """The continuation of prompt; with stream=True, an iterator of text pieces."""
    def create_completion(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        stop: _Stop = None,
        seed: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A "text_completion" dict as llama-cpp-python returns it (chunks with stream=True)."""
    def create_chat_completion(
        self,
        messages: List[Dict[str, str]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        stop: _Stop = None,
        seed: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A "chat.completion" dict ("chat.completion.chunk" dicts with stream=True)."""
    def _generate(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        repeat_penalty: float,
        seed: Optional[int],
        stop: List[str],
    ) -> Generation: ...
    def _chat_prompt(self, messages: List[Dict[str, str]]) -> Tuple[str, List[str]]: ...
    def _room(self, prompt: str) -> int: ...
