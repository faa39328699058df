"""Text corpora for training: train / validation / test splits, a byte-level BPE tokenizer,
token ids (cached on disk).

Sources:

- the built-in corpora: ``bible``, the King James Bible (:func:`builtin_corpus`), for the smoke
  and quick scales, and ``english``, about 80 MB of English from five Debian packages
  (:func:`english_corpus`, :mod:`tokendyn.data.debian_text`), for the full scale;
- any UTF-8 text files (:func:`text_files_corpus`), concatenated in the order given;
- WikiText-103 / WikiText-2 from a directory holding the raw ``wiki.train.tokens``,
  ``wiki.valid.tokens`` and ``wiki.test.tokens`` (:func:`wikitext_corpus`): their own splits.

The built-in corpus and text files are split by contiguous blocks (:func:`split_blocks`):
the text is cut at line ends into 100 blocks of about equal length; in every run of 20
consecutive blocks, block 18 goes to validation, block 19 to test and the other 18 to
training (90 / 5 / 5 %). Held-out text is thus whole passages spread over the corpus
(for the Bible: from Genesis to Revelation), never single lines interleaved with training
lines, and the split is a pure function of the text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..outputs import write_file
from . import text as textdata

SPLITS = ("train", "validation", "test")
N_BLOCKS = 100
PERIOD = 20            # in every PERIOD consecutive blocks: ...
VALIDATION_BLOCK = 18  # this one is validation,
TEST_BLOCK = 19        # this one test, the rest training
WIKITEXT_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}
MIN_VOCAB = 256        # the byte alphabet of byte-level BPE
MAX_VOCAB = 1 << 20    # 2^20: above every tokenizer in use (GPT-2 50k, the largest current ones 256k)


def check_vocab_size(vocab_size) -> int:
    """The BPE vocabulary size asked for, checked: an integer in [MIN_VOCAB, MAX_VOCAB]."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"the vocabulary size must be an integer from {MIN_VOCAB} (the byte alphabet) to "
                          f"{MAX_VOCAB:,}, got {vocab_size!r}.")
    return vocab_size


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class TextCorpus:
    """Raw text of the three splits and a description of where it came from."""

    name: str
    splits: dict[str, str]
    # where the text came from, source by source (package, version, files, chars, sha256)
    composition: list[dict] | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the three splits' text: equal fingerprints, equal data."""
        return _sha(*(self.splits[s] for s in SPLITS))

    def describe(self) -> dict:
        out = {"name": self.name, "sha256": self.fingerprint, "chars": {s: len(self.splits[s]) for s in SPLITS}}
        if self.composition is not None:
            out["composition"] = self.composition
        return out


def split_blocks(text: str, source: str = "the text") -> dict[str, str]:
    """Deterministic train / validation / test split by contiguous blocks (module docstring).

    Block k ends at the first line end at or after character k·len/N_BLOCKS (or exactly
    there when the block holds no line end). Raises :class:`DataError` when the text is
    too short for every split to receive some text.
    """
    n = len(text)
    cuts = [0]
    for k in range(1, N_BLOCKS):
        target = max(k * n // N_BLOCKS, cuts[-1])
        nl = text.find("\n", target, (k + 1) * n // N_BLOCKS)
        cuts.append(nl + 1 if nl >= 0 else target)
    cuts.append(n)
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for k in range(N_BLOCKS):
        r = k % PERIOD
        split = "validation" if r == VALIDATION_BLOCK else "test" if r == TEST_BLOCK else "train"
        parts[split].append(text[cuts[k]:cuts[k + 1]])
    out = {s: "".join(p) for s, p in parts.items()}
    short = [s for s in SPLITS if not out[s].strip()]
    if short:
        raise DataError(f"{source} is too short to split into train, validation and test "
                        f"({n} characters leave the {' and '.join(short)} split empty).")
    return out


def builtin_corpus() -> TextCorpus:
    """The King James Bible (one verse per line, references stripped), split by blocks."""
    return TextCorpus("King James Bible (Debian bible-kjv), split by contiguous blocks 90/5/5",
                      split_blocks(textdata.bible_text(), "the built-in corpus"))


def text_files_corpus(paths) -> TextCorpus:
    """UTF-8 text files joined by newlines in the given order, split by blocks.

    Each file must exist, be UTF-8 and hold some text (:class:`DataError` otherwise).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no text files given.")
    texts = [textdata.read_text_file(p) for p in paths]
    names = ", ".join(p.name for p in paths)
    return TextCorpus(f"text files {names}, split by contiguous blocks 90/5/5",
                      split_blocks("\n".join(t.rstrip("\n") for t in texts) + "\n", f"the text of {names}"))


def wikitext_corpus(directory) -> TextCorpus:
    """WikiText-103 / WikiText-2 from the raw ``wiki.{train,valid,test}.tokens`` in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"WikiText directory {directory} does not exist.")
    missing = [f for f in WIKITEXT_FILES.values() if not (directory / f).is_file()]
    if missing:
        raise DataError(f"WikiText directory {directory} lacks {', '.join(missing)}.")
    splits = {s: textdata.read_text_file(directory / f) for s, f in WIKITEXT_FILES.items()}
    return TextCorpus(f"WikiText ({directory.name}: wiki.train/valid/test.tokens)", splits)


def english_corpus(sources=None) -> TextCorpus:
    """English text from Debian packages (:mod:`tokendyn.data.debian_text`): each source split
    by blocks on its own, the splits joined source by source, so every split has the same
    composition. Records each source's package, version, files, characters per split and hash."""
    from . import debian_text

    parts = {s: [] for s in SPLITS}
    composition = []
    for src, text, record in debian_text.read_sources(sources or debian_text.SOURCES):
        split = split_blocks(text, f"the {src.package} text")
        for s in SPLITS:
            parts[s].append(split[s])
        composition.append({**record, "chars_per_split": {s: len(split[s]) for s in SPLITS}})
    keys = "+".join(r["key"] for r in composition)
    return TextCorpus(f"English from Debian packages ({keys}), each split by contiguous blocks 90/5/5",
                      {s: "".join(p) for s, p in parts.items()}, composition)


BUILTIN_CORPORA = {"bible": builtin_corpus, "english": english_corpus}


def load_corpus(text_files=None, wikitext=None, builtin: str | None = None) -> TextCorpus:
    """The corpus a command asked for: text files, a WikiText directory, or the built-in corpus
    named ``builtin`` (a key of :data:`BUILTIN_CORPORA`; None: the Bible)."""
    if sum(bool(x) for x in (text_files, wikitext, builtin)) > 1:
        raise ConfigError("pass one of text files, a WikiText directory or a built-in corpus, not several.")
    if wikitext:
        return wikitext_corpus(wikitext)
    if text_files:
        return text_files_corpus(text_files)
    builtin = builtin or "bible"
    if builtin not in BUILTIN_CORPORA:
        raise ConfigError(f"unknown built-in corpus {builtin!r}; choose one of {', '.join(BUILTIN_CORPORA)}.")
    return BUILTIN_CORPORA[builtin]()


# ---- tokenizer -----------------------------------------------------------------------


def _pieces(text: str) -> list[str]:
    # lines with their line ends: the tokenizer sees the newlines, and encode_batch can
    # work on many short pieces in parallel
    return text.splitlines(keepends=True)


def train_bpe(text: str, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` tokens trained on ``text``.

    Byte-level: the 256 byte values are the base alphabet, so any text encodes with no
    unknown token; ``vocab_size = 256`` gives plain bytes (no merges).
    """
    check_vocab_size(vocab_size)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(_pieces(text), trainer=trainer)
    return tok


def encode_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text``, line by line (no special tokens). Returns (n,) int32."""
    ids: list[int] = []
    for enc in tokenizer.encode_batch(_pieces(text), add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


def default_cache_dir() -> Path:
    """``$TOKENDYN_CACHE``, else ``~/.cache/tokendyn``."""
    env = os.environ.get("TOKENDYN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tokendyn"


@dataclass
class TokenizedCorpus:
    """Token ids of each split (n,) int32, the tokenizer, and where the data came from."""

    corpus: dict
    tokenizer: object
    tokenizer_source: str
    ids: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def tokenizer_json(self) -> str:
        return self.tokenizer.to_str()

    def fingerprint(self) -> str:
        """sha256 of the corpus and the tokenizer: equal fingerprints, equal token ids."""
        return _sha(self.corpus["sha256"], self.tokenizer_json)

    def describe(self) -> dict:
        return {**self.corpus, "tokenizer": self.tokenizer_source, "vocab_size": self.vocab_size,
                "tokens": {s: int(self.ids[s].numel()) for s in SPLITS}, "sha256_tokens": self.fingerprint()}

    def save_tokenizer(self, path: Path) -> Path:
        """Write tokenizer.json (atomically) to ``path`` (a file or a directory)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "tokenizer.json"
        write_file(path, self.tokenizer_json.encode("utf-8"))
        return path


def tokenize_corpus(corpus: TextCorpus, tokenizer=None, vocab_size: int = 4096,
                    cache_dir: Path | None = None) -> TokenizedCorpus:
    """Tokenise every split.

    tokenizer: a ``tokenizer.json`` path (the user's), or None to train a byte-level BPE
    of ``vocab_size`` tokens on the training split. With ``cache_dir`` the trained
    tokenizer and the token ids are kept there as ``tokenizer-<sha256>.json`` and
    ``tokens-<sha256>-<split>.bin`` (raw little-endian int32), keyed by the hash of what
    determines them, and reused.
    """
    import tokenizers
    from tokenizers import Tokenizer

    cache = Path(cache_dir) if cache_dir is not None else None
    if tokenizer is not None:
        tok = textdata.load_tokenizer(tokenizer)
        source = f"user tokenizer {tokenizer}"
    else:
        check_vocab_size(vocab_size)
        key = _sha("bpe", corpus.fingerprint, str(vocab_size), tokenizers.__version__)
        path = cache / f"tokenizer-{key}.json" if cache else None
        tok = None
        if path is not None and path.is_file():
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception:  # a damaged cache entry is rebuilt, never trusted
                tok = None
        if tok is None:
            tok = train_bpe(corpus.splits["train"], vocab_size)
            if path is not None:
                write_file(path, tok.to_str().encode("utf-8"))
        source = f"byte-level BPE, {vocab_size} tokens, trained on the training split"
    out = TokenizedCorpus(corpus=corpus.describe(), tokenizer=tok, tokenizer_source=source)
    key = out.fingerprint()
    for split in SPLITS:
        path = cache / f"tokens-{key}-{split}.bin" if cache else None
        ids = None
        if path is not None and path.is_file():
            raw = path.read_bytes()
            if len(raw) % 4 == 0 and raw:
                ids = torch.frombuffer(bytearray(raw), dtype=torch.int32).clone()
        if ids is None:
            ids = encode_text(tok, corpus.splits[split])
            if path is not None:
                write_file(path, ids.numpy().astype("<i4").tobytes())
        if ids.numel() < 2:
            raise DataError(f"the {split} split of {corpus.name} yields fewer than 2 tokens.")
        out.ids[split] = ids
    return out
