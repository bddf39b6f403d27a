"""Tokenize texts and run the bundle's ONNX graph: the model behind the service.

An input is a text (``str``) for a ``task: text`` bundle, or a pair of texts
(``tuple[str, str]``) for a ``task: pair`` bundle; pairs go through the
tokenizer's own pair template, type ids included. Knows nothing about HTTP. The
export stage uses it too, so verification runs the exact code path that serves
traffic.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.core.backends.base import Backend
from service.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from service.core.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, load_verified
from service.core.scoring import probabilities, sigmoid, softmax
from service.core.windows import KEPT_SIDE_SHARE, SECOND

__all__ = [
    "Encoded",
    "InputKindError",
    "NoTokens",
    "OnnxClassifier",
    "TextInput",
    "probabilities",
    "sigmoid",
    "softmax",
]

TextInput = str | tuple[str, str]


def _as_args(item: TextInput) -> tuple[str, ...]:
    """A text, or a pair as the tokenizer's (sequence, pair) arguments."""
    return (item,) if isinstance(item, str) else (item[0], item[1])


class InputKindError(ValueError):
    """A single text given to a pair model, or a pair given to a text model."""


class TooManyTokens(ValueError):
    """More tokens than a ``/tokenize`` answer may list."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"the texts have {tokens} tokens, more than the limit of {limit} per /tokenize request "
            "(MAX_TOKENIZE_TOKENS); send shorter texts"
        )


class NoTokens(ValueError):
    """An input that tokenizes to no tokens at all (a decoder model without BOS given "")."""


# A batch of more padded tokens than this hands the memory it grew back to the system when it
# ends, so a burst of long texts does not leave the process at its peak. Smaller batches keep
# it: giving it back after every short query costs each of them new page faults.
SHRINK_ABOVE_TOKENS = 2048
# Windowing tokenizers kept per classifier (one per strategy and overlap in use): a few cover the
# settings' overlap for texts and pairs, and a caller trying every overlap cannot make more.
WINDOW_TOKENIZERS = 4


@dataclass(frozen=True)
class Encoded:
    """One input after tokenization: truncated ids, and its untruncated length when counted.

    Only the ids the model reads are kept (a few KiB at most). A tokenizers ``Encoding``
    also holds every token's string and offsets and, for a truncated text, the whole cut-off
    rest: about 100 MB for a 1 MiB text, far too much to hold while it waits in the queue.
    """

    ids: np.ndarray
    type_ids: np.ndarray
    full_length: int | None

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Windowed:
    """One input read in windows: the first ``len(windows)`` of the ``needed`` it takes whole.

    ``cut`` says the kept side of a pair was longer than its share of a window and was cut.
    """

    windows: list[Encoded]
    needed: int
    cut: bool = False
    overlap: int = 0  # the tokens its windows share: what was asked, or less when a window had too little room

    @property
    def truncated(self) -> bool:
        return self.cut or self.needed > len(self.windows)


class OnnxClassifier:
    """Tokenizes, pads and scores for one bundle; ``backend`` runs its graph (ONNX Runtime's session on
    ``model_path`` unless another is given)."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        manifest: Manifest,
        *,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        backend: Backend | None = None,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self._counter = Tokenizer.from_file(str(tokenizer_path))
        self._counter.no_padding()
        self._counter.no_truncation()
        self._left: Tokenizer | None = None
        self._windowing: dict[tuple[str, int], Tokenizer] = {}
        self._window_lock = threading.Lock()
        # One long tokenization at a time: each holds every token of its texts until it is
        # cut (about 100 bytes a token), and encode_batch already spreads over the cores.
        self._exclusive = threading.Lock()
        self.pad_id = _pad_id(self.tokenizer)
        self.backend: Backend = backend or OnnxRuntimeBackend(
            model_path,
            variant=manifest.variant,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        self.input_names = list(self.backend.input_names)

    @property
    def session(self) -> Any:
        """ONNX Runtime's session, when that is the backend (the export stage inspects it)."""
        return getattr(self.backend, "session", None)

    @classmethod
    def from_bundle(cls, directory: Path | str, *, intra_op_threads: int = 0) -> OnnxClassifier:
        """The bundle's ``model.onnx`` on ONNX Runtime (``service.core.loading`` picks the engine by rule)."""
        directory = Path(directory)
        manifest = load_verified(directory)
        return cls(directory / MODEL_FILE, directory / TOKENIZER_FILE, manifest, intra_op_threads=intra_op_threads)

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def _prepare(self, inputs: Sequence[TextInput]) -> list[TextInput]:
        pair = self.manifest.is_pair
        for index, item in enumerate(inputs):
            if pair and not _is_pair(item):
                raise InputKindError(f"input {index}: this model classifies text pairs; each input must be two texts")
            if not pair and not isinstance(item, str):
                raise InputKindError(f"input {index}: this model classifies single texts, not pairs")
        if not self.manifest.strip_whitespace:
            return [(item[0], item[1]) if pair else item for item in inputs]
        if pair:
            return [(item[0].strip(), item[1].strip()) for item in inputs]
        return [item.strip() for item in inputs]  # type: ignore[union-attr]

    def _truncating(self, direction: str) -> Tokenizer:
        if direction == "right":
            return self.tokenizer
        if self._left is None:  # built on first use: most traffic never asks for it
            self._left = Tokenizer.from_str(self.tokenizer.to_str())
            self._left.enable_truncation(**{**(self.tokenizer.truncation or {}), "direction": "left"})
        return self._left

    def encode(
        self,
        texts: Sequence[TextInput],
        *,
        count_full: bool = False,
        direction: str = "right",
        exclusive: bool = False,
        off_loop: bool = False,
    ) -> list[Encoded]:
        """Tokenize and truncate at ``direction``'s end (a pair: longest-first, as
        transformers' ``truncation=True``). ``count_full`` also counts the tokens of
        inputs that were cut (a second, untruncated pass, paid only by those inputs).
        ``exclusive`` waits for any other exclusive call to finish first (long texts, on
        worker threads). Raises InputKindError when an input is not of the bundle's ``task``."""
        if exclusive:
            with self._exclusive, _trimmed(texts):
                return self.encode(texts, count_full=count_full, direction=direction, off_loop=True)
        prepared = self._prepare(texts)
        encodings = _encode_all(self._truncating(direction), prepared, off_loop=off_loop)
        limit = (self.tokenizer.truncation or {}).get("max_length")
        results = []
        for index, (item, encoding) in enumerate(zip(prepared, encodings)):
            ids = encoding.ids
            if not ids:
                raise NoTokens(f"input {index} has no tokens for this model; send a non-empty text")
            full: int | None = len(ids)
            # Only an input at the limit can have been cut; ``overflowing`` would copy all it lost.
            if limit is not None and full >= limit:
                full = len(_encode_all(self._counter, [item], off_loop=off_loop)[0].ids) if count_full else None
            results.append(Encoded(np.array(ids, dtype=np.int64), np.array(encoding.type_ids, dtype=np.int64), full))
        return results

    @property
    def window_length(self) -> int:
        """The tokens of one window, special tokens included: what the tokenizer cuts at."""
        return int((self.tokenizer.truncation or {}).get("max_length") or self.manifest.max_length)

    def special_tokens(self, pair: bool) -> int:
        processor = self.tokenizer.post_processor
        return 0 if processor is None else int(processor.num_special_tokens_to_add(pair))

    def encode_windows(
        self,
        texts: Sequence[TextInput],
        *,
        overlap: int,
        max_windows: int,
        side: str = SECOND,
        exclusive: bool = False,
        off_loop: bool = False,
    ) -> list[Windowed]:
        """Each input as windows of ``window_length`` tokens sharing ``overlap`` tokens (fewer when
        a window has too little room for that many), made by the tokenizer's overflow support so
        every window carries the special tokens the model expects. Of a pair, ``side`` is windowed
        and the other side kept whole in every window (cut to half a window when longer). At most
        ``max_windows`` windows are kept per input. Raises InputKindError like ``encode``."""
        if exclusive:
            with self._exclusive, _trimmed(texts):
                return self.encode_windows(texts, overlap=overlap, max_windows=max_windows, side=side, off_loop=True)
        if overlap < 0 or max_windows < 1:
            raise ValueError("overlap must be at least 0 and max_windows at least 1")
        results = []
        for index, item in enumerate(self._prepare(texts)):
            if isinstance(item, str):
                windowed = self._windows_of_text(item, overlap, off_loop)
            else:
                windowed = self._windows_of_pair(item, overlap, side, off_loop)
            if not windowed.windows[0].length:
                raise NoTokens(f"input {index} has no tokens for this model; send a non-empty text")
            results.append(dataclasses.replace(windowed, windows=windowed.windows[:max_windows]))
        return results

    def _windows_of_text(self, text: str, overlap: int, off_loop: bool) -> Windowed:
        room = self.window_length - self.special_tokens(False)
        stride = min(overlap, room // 2)
        (encoding,) = _encode_all(self._window_tokenizer("longest_first", stride), [text], off_loop=off_loop)
        return dataclasses.replace(_windowed(encoding), overlap=stride)

    def _windows_of_pair(self, pair: tuple[str, str], overlap: int, side: str, off_loop: bool) -> Windowed:
        keep = 0 if side == SECOND else 1
        room = self.window_length - self.special_tokens(True)
        share = int(room * KEPT_SIDE_SHARE)
        kept = self._counter.encode(pair[keep], add_special_tokens=False)  # a query or a hypothesis: short
        cut = len(kept.ids) > share
        if cut:  # the text up to the last token that fits its share
            texts = list(pair)
            texts[keep] = pair[keep][: kept.offsets[share - 1][1]]
            pair = (texts[0], texts[1])
        strategy = "only_second" if side == SECOND else "only_first"
        stride = min(overlap, (room - min(len(kept.ids), share)) // 2)
        tokenizer = self._window_tokenizer(strategy, stride)
        (encoding,) = _encode_all(tokenizer, [pair], off_loop=off_loop)
        windowed = _windowed(encoding)
        return dataclasses.replace(windowed, cut=cut, overlap=stride)

    def _window_tokenizer(self, strategy: str, stride: int) -> Tokenizer:
        """A copy of the tokenizer that cuts with ``strategy`` and keeps the rest as overlapping windows.
        The last WINDOW_TOKENIZERS used are kept: each copy is megabytes, and callers choose the stride."""
        with self._window_lock:
            tokenizer = self._windowing.pop((strategy, stride), None)
            if tokenizer is None:
                tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
                tokenizer.no_padding()
                tokenizer.enable_truncation(self.window_length, stride=stride, strategy=strategy, direction="right")
            self._windowing[(strategy, stride)] = tokenizer  # the most recently used, last
            while len(self._windowing) > WINDOW_TOKENIZERS:
                del self._windowing[next(iter(self._windowing))]
            return tokenizer

    def tokens(
        self,
        texts: Sequence[str],
        *,
        add_special_tokens: bool,
        max_tokens: int | None = None,
        exclusive: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """Untruncated tokens with UTF-8 byte offsets into each text (TEI's ``/tokenize``), in time linear in
        the texts' length. More than ``max_tokens`` in all raises TooManyTokens before any token is listed.
        ``exclusive`` waits for any other exclusive call to finish first, as ``encode`` does."""
        if exclusive:
            with self._exclusive, _trimmed(texts):
                return self.tokens(texts, add_special_tokens=add_special_tokens, max_tokens=max_tokens)
        encodings = self._counter.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        total = sum(len(encoding.ids) for encoding in encodings)
        if max_tokens is not None and total > max_tokens:
            del encodings  # the exception's frames would keep every token alive past the trim
            raise TooManyTokens(total, max_tokens)
        return [_listed(text, encoding) for text, encoding in zip(texts, encodings)]

    def decode(self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        return self._counter.decode_batch([list(ids) for ids in sequences], skip_special_tokens=skip_special_tokens)

    def feeds(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """The graph's inputs for already-encoded texts, padded to the longest in the batch."""
        width = max(item.length for item in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, item in enumerate(batch):
            n = item.length
            ids[row, :n] = item.ids
            mask[row, :n] = 1
            types[row, :n] = item.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name] for name in self.input_names}

    def run(self, batch: Sequence[Encoded]) -> np.ndarray:
        """Logits for already-encoded texts, padded to the longest in the batch."""
        feeds = self.feeds(batch)
        return self.backend.run(feeds, large=feeds["input_ids"].size > SHRINK_ABOVE_TOKENS)

    def logits(self, texts: Sequence[TextInput], batch_size: int = 32, max_tokens: int | None = None) -> np.ndarray:
        """Logits of ``texts`` in batches sorted by length: at most ``batch_size`` inputs and, with
        ``max_tokens``, at most that many padded tokens (an input longer than that alone gets a batch)."""
        encoded = self.encode(texts)
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
        out = np.empty((len(encoded), len(self.manifest.id2label)), dtype=np.float32)
        chunk: list[int] = []
        for index in order:
            full = len(chunk) == batch_size
            if chunk and (full or (max_tokens is not None and (len(chunk) + 1) * encoded[index].length > max_tokens)):
                out[chunk] = self.run([encoded[i] for i in chunk])
                chunk = []
            chunk.append(index)
        if chunk:
            out[chunk] = self.run([encoded[i] for i in chunk])
        return out


def _encode_all(tokenizer: Tokenizer, items: Sequence[TextInput], *, off_loop: bool) -> list[Any]:
    """The encodings of ``items``. ``encode_batch`` lets go of the GIL while it works and ``encode`` does
    not (15 ms for a 5,000-token text, in which neither the event loop nor the batcher's thread moves),
    so a worker thread (``off_loop``) always uses it. On the event loop one input is encoded in place:
    ``encode_batch`` would hand it to a thread pool whose threads compete with the model's for the cores."""
    if len(items) == 1 and not off_loop:
        return [tokenizer.encode(*_as_args(items[0]), add_special_tokens=True)]
    return tokenizer.encode_batch(list(items), add_special_tokens=True)


def _windowed(encoding: Any) -> Windowed:
    windows = [encoding, *encoding.overflowing]
    encoded = [
        Encoded(np.array(e.ids, dtype=np.int64), np.array(e.type_ids, dtype=np.int64), len(e.ids)) for e in windows
    ]
    return Windowed(encoded, len(encoded))


def _listed(text: str, encoding: Any) -> list[dict[str, Any]]:
    offsets = _byte_offsets(text)
    tokens = []
    for token_id, token, special, (start, stop) in zip(
        encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets
    ):
        if special:
            tokens.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
            continue
        byte_start, byte_stop = (start, stop) if offsets is None else (int(offsets[start]), int(offsets[stop]))
        tokens.append(
            {"id": token_id, "text": text[start:stop], "special": False, "start": byte_start, "stop": byte_stop}
        )
    return tokens


# Tokenizing this many characters at once leaves tens of MiB freed inside the C allocator's
# arenas, which glibc keeps for the thread that freed them unless asked to give them back.
TRIM_AFTER_CHARS = 65_536
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform == "linux" else None


def release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim; elsewhere nothing)."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


@contextlib.contextmanager
def _trimmed(texts: Sequence[TextInput]) -> Iterator[None]:
    """Hand the allocator's free memory back to the system after a long tokenization (glibc's malloc_trim)."""
    try:
        yield
    finally:
        chars = sum(len(item) if isinstance(item, str) else len(item[0]) + len(item[1]) for item in texts)
        if chars >= TRIM_AFTER_CHARS and _libc is not None and hasattr(_libc, "malloc_trim"):
            _libc.malloc_trim(0)


def _byte_offsets(text: str) -> np.ndarray | None:
    """The UTF-8 byte offset of every character boundary of ``text`` (None when they equal the character
    offsets, as for ASCII): one vectorised pass instead of encoding the text up to each token."""
    if text.isascii():
        return None
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    offsets = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(widths, out=offsets[1:])
    return offsets


def _is_pair(item: object) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str)


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
