"""CLIP's byte-level BPE tokenizer (Radford et al. 2021, section 2.4).

Text is cleaned (``ftfy.fix_text``, HTML entities unescaped twice, whitespace runs
collapsed, lower-cased), split into words by CLIP's regular expression, each word
mapped to printable unicode byte-by-byte and merged by the ranked BPE merges of the
released vocabulary (49,152 merges; 49,408 ids with the two special tokens). A
sequence is ``<start_of_text> ids <end_of_text>``, zero-padded to the context
length; longer sequences are cut and end with ``<end_of_text>``.

The vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` ships beside this module
(OpenAI CLIP, MIT licence; see ``BPE_VOCAB_LICENSE.txt``).
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import os
from collections.abc import Sequence

import numpy as np

VOCAB_PATH = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_WORD_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
    r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def byte_alphabet() -> dict[int, str]:
    """Each byte -> one printable unicode character, in vocabulary order: first the
    printable Latin-1 bytes (mapped to themselves), then the others, in byte order,
    to the code points 256, 257, ..."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


class Tokenizer:
    """BPE tokenizer over a merges file (gzip text: a header line, then ``a b`` merges)."""

    def __init__(self, vocab_path: str = VOCAB_PATH):
        import regex

        self._regex = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        self.byte_encoder = byte_alphabet()
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        base = list(self.byte_encoder.values())
        vocab = base + [ch + "</w>" for ch in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]
        self._cache = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        """One pre-tokenised word (byte-mapped) -> its BPE symbols; the last ends ``</w>``."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(itertools.pairwise(symbols))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    @staticmethod
    def clean(text: str) -> str:
        """ftfy fix, HTML unescape (twice), whitespace runs to one space, strip, lower."""
        import ftfy
        import regex

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return regex.sub(r"\s+", " ", text).strip().lower()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start/end tokens)."""
        ids = []
        for word in self._regex.findall(self.clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to (cleaned) text; ``</w>`` becomes a space."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder.get(c, 32) for c in text.replace("</w>", " "))
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
        """``(B, context_length)`` int32: ``<sot> ids <eot>`` zero-padded; too long -> cut,
        with ``<eot>`` as the last id."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text prompts must be strings, got {type(text).__name__}")
            ids = [self.sot_token] + self.encode(text) + [self.eot_token]
            if len(ids) > context_length:
                ids = ids[: context_length - 1] + [self.eot_token]
            out[row, : len(ids)] = ids
        return out


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The tokenizer of the shipped OpenAI vocabulary (loaded once)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """``(B, context_length)`` int32 ids of ``texts`` with the OpenAI vocabulary."""
    return default_tokenizer()(texts, context_length)
