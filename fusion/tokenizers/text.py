"""The text half of the vocabulary: a sentencepiece BPE with byte fallback, trained from any string iterator.

Control tokens (bos, eos, boi, ...) are NOT sentencepiece pieces: they live in ``fusion.vocab.Vocab`` outside
the text range, so no text, including a user typing "<boi>", can ever encode to one. Normalisation is the
identity and whitespace is kept, so ``decode(encode(s)) == s`` for every string.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from fusion import checkpoint_layout as layout
from fusion.files import atomic_path


class TextTokenizer:
    """Sentencepiece BPE with piece ids ``0 .. vocab_size - 1`` (0 is ``<unk>``, unused with byte fallback)."""

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, *, max_sentence_length: int = 1 << 16,
              num_threads: int = 2) -> TextTokenizer:
        """Train a byte-fallback BPE; ``vocab_size`` is an upper bound when the corpus is small."""
        if vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 (256 byte pieces + unk + merges), got {vocab_size}")
        sentences = _non_empty(texts)
        first = next(sentences, None)
        if first is None:  # sentencepiece fails with an internal error on an empty corpus
            raise ValueError("cannot train a text tokenizer on an empty corpus")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], sentences), model_writer=model, model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, split_digits=True,
            allow_whitespace_only_pieces=True, hard_vocab_limit=False, unk_id=0, bos_id=-1, eos_id=-1,
            pad_id=-1, max_sentence_length=max_sentence_length, num_threads=num_threads,
            minloglevel=2)
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text piece ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self.sp.decode(ids)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``text.model`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / layout.TEXT_MODEL
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._proto)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> TextTokenizer:
        """A checkpoint folder holding ``text.model``, or a ``.model`` file itself."""
        path = Path(path)
        return cls((path / layout.TEXT_MODEL if path.is_dir() else path).read_bytes())


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"training texts must be str, got {type(t).__name__}")
        if t:
            yield t


class HFTextTokenizer:
    """A HF ``tokenizer.json`` (Chameleon's BPE) behind TextTokenizer's interface; its ids are already global."""

    def __init__(self, path: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.tk = Tokenizer.from_file(str(path))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> HFTextTokenizer:
        return cls(Path(directory) / layout.HF_TEXT_TOKENIZER)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Copy ``tokenizer.json`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / layout.HF_TEXT_TOKENIZER
        if path.resolve() != self.path.resolve():
            with atomic_path(path) as tmp:
                tmp.write_bytes(self.path.read_bytes())
        return path

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)
