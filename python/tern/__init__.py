"""tern: run BitNet b1.58 models from one memory-mapped ``.tern`` file.

    import tern
    tern.convert("path/to/checkpoint", "model.tern")
    m = tern.Model("model.tern")
    print(m.generate("It is a truth universally acknowledged", max_tokens=32, temperature=0))

Every computation is the runtime's (or the converter's) own library call, the same one
the ``tern`` and ``tern-convert`` command lines make, with the GIL released while it runs.
This file only shapes results into the dicts that llama-cpp-python and the OpenAI API
return. Importing it loads no model.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from . import _tern
from ._tern import TernError, Generation, convert, verify

__version__: str = _tern.__version__
__all__ = ["Model", "TernError", "Generation", "convert", "verify", "__version__"]


def _stops(stop: Union[str, Sequence[str], None]) -> List[str]:
    """Stop strings as a list: None, one string, or several (as llama-cpp-python takes them)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return list(stop)


def _usage(g: Generation) -> Dict[str, int]:
    completion = g.completion_tokens or 0
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": g.prompt_tokens + completion,
    }


class Model(_tern.Model):
    """A ``.tern`` model, memory-mapped; ``Model(path, n_threads=None, n_ctx=None)``.

    ``n_threads``: threads per call (default: the physical cores this process may use).
    ``n_ctx``: positions a prompt and its continuation may use (default and maximum: the
    model's context). A Model may be shared by threads: each call has its own state.
    Dropping the last reference unmaps the file.
    """

    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """The continuation of ``prompt`` (the prompt itself not included).

        Stops at an end-of-sequence token, after ``max_tokens`` tokens, or at a ``stop``
        string (not included). ``temperature=0`` is greedy and gives the same text as
        ``tern generate --temp 0``; the same ``seed`` gives the same sample (None: from the
        clock). With ``stream=True``, an iterator of text pieces that join to the same
        text. Ctrl-C raises KeyboardInterrupt and stops the generation within one token.
        Raises ValueError for out-of-range arguments or a prompt longer than the context.
        """
        g = self._generate(prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, seed, _stops(stop))
        return g if stream else "".join(g)

    def create_completion(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        stop: Union[str, Sequence[str], None] = None,
        seed: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A text completion as llama-cpp-python's ``Llama.create_completion`` returns it.

        A dict ``{"id", "object": "text_completion", "created", "model", "choices":
        [{"text", "index", "logprobs", "finish_reason"}], "usage": {"prompt_tokens",
        "completion_tokens", "total_tokens"}}``; with ``stream=True``, an iterator of such
        dicts, one per text piece, the last with ``finish_reason`` and ``usage``.
        """
        g = self._generate(prompt, max_tokens, temperature, top_k, top_p, 1.0, seed, _stops(stop))
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()), "model": self.path}

        def choice(text: str, finish: Optional[str]) -> Dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        if not stream:
            text = "".join(g)
            return {**head, "choices": [choice(text, g.finish_reason)], "usage": _usage(g)}

        def chunks() -> Iterator[Dict[str, Any]]:
            for piece in g:
                yield {**head, "choices": [choice(piece, None)]}
            yield {**head, "choices": [choice("", g.finish_reason)], "usage": _usage(g)}

        return chunks()

    def create_chat_completion(
        self,
        messages: List[Dict[str, str]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        stop: Union[str, Sequence[str], None] = None,
        seed: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A chat reply as llama-cpp-python's ``Llama.create_chat_completion`` returns it.

        ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``,
        rendered with the model's chat template or, without one (``chat_template`` is
        None), with the plain fallback: one ``Role: content`` line per message, then
        ``Assistant:``; the reply then also stops at ``"\\nUser:"``. ``max_tokens=None``:
        until an end-of-sequence token or the end of the context.

        A dict ``{"id", "object": "chat.completion", "created", "model", "choices":
        [{"index", "message": {"role": "assistant", "content"}, "logprobs",
        "finish_reason"}], "usage"}``; with ``stream=True``, an iterator of
        ``"chat.completion.chunk"`` dicts whose ``choices[0]["delta"]`` holds first the
        role, then each piece of content, and last nothing (with ``finish_reason``).
        """
        prompt, stops = self._chat_prompt(messages)
        if max_tokens is None:
            max_tokens = self._room(prompt)
        g = self._generate(prompt, max_tokens, temperature, top_k, top_p, 1.0, seed, stops + _stops(stop))
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4()}"

        if not stream:
            content = "".join(g)
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": self.path,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": g.finish_reason,
                    }
                ],
                "usage": _usage(g),
            }

        def chunk(delta: Dict[str, str], finish: Optional[str]) -> Dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.path, "choices": [choice]}

        def chunks() -> Iterator[Dict[str, Any]]:
            yield chunk({"role": "assistant"}, None)
            for piece in g:
                yield chunk({"content": piece}, None)
            last = chunk({}, g.finish_reason)
            last["usage"] = _usage(g)
            yield last

        return chunks()
