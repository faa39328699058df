"""Training corpora: the block split, text files, WikiText files, the byte-level BPE tokenizer,
the token cache, and the tokenizer saved with a run being the one `tokendyn analyze` uses."""

from __future__ import annotations

import shutil

import pytest
import torch
from train_helpers import WORDS, write_text

from tokendyn.data import corpus as C
from tokendyn.errors import ConfigError, DataError


def test_split_blocks_is_a_partition_at_line_ends():
    lines = [f"line {i} " + "x" * (i % 17) for i in range(2000)]
    text = "\n".join(lines) + "\n"
    parts = C.split_blocks(text)
    assert sum(len(parts[s]) for s in C.SPLITS) == len(text)
    assert 0.04 < len(parts["validation"]) / len(text) < 0.06 and 0.04 < len(parts["test"]) / len(text) < 0.06
    # whole lines only, each line in exactly one split
    got = sorted(line for s in C.SPLITS for line in parts[s].splitlines())
    assert got == sorted(lines)
    # contiguous blocks: validation lines come in 5 runs of consecutive line numbers
    val = [int(line.split()[1]) for line in parts["validation"].splitlines()]
    runs = 1 + sum(b != a + 1 for a, b in zip(val, val[1:]))
    assert runs == 5 and val[0] > 1700 * 0.9 * 0.1     # the first validation block is block 18 of 100
    assert C.split_blocks(text) == parts                # deterministic


def test_split_without_line_ends_and_too_short():
    parts = C.split_blocks("abcdefghij" * 100)
    assert sum(map(len, parts.values())) == 1000 and all(parts.values())
    with pytest.raises(DataError, match="too short"):
        C.split_blocks("one short line\n")


def test_text_files_corpus(tmp_path):
    a = write_text(tmp_path / "a.txt", 150, seed=1)
    b = write_text(tmp_path / "b.txt", 150, seed=2)
    corpus = C.text_files_corpus([a, b])
    joined = "".join(corpus.splits[s] for s in C.SPLITS)
    assert sorted(joined.splitlines()) == sorted(a.read_text().splitlines() + b.read_text().splitlines())
    assert "a.txt, b.txt" in corpus.name
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        C.text_files_corpus([a, tmp_path / "e.txt"])


def test_wikitext_directory(tmp_path):
    d = tmp_path / "wikitext-2-raw"
    d.mkdir()
    for name, seed in (("wiki.train.tokens", 0), ("wiki.valid.tokens", 1), ("wiki.test.tokens", 2)):
        write_text(d / name, 40, seed=seed)
    corpus = C.wikitext_corpus(d)
    assert corpus.splits["validation"] == (d / "wiki.valid.tokens").read_text()
    assert corpus.splits["test"] == (d / "wiki.test.tokens").read_text()
    assert C.load_corpus(wikitext=d).fingerprint == corpus.fingerprint
    (d / "wiki.test.tokens").unlink()
    with pytest.raises(DataError, match="wiki.test.tokens"):
        C.wikitext_corpus(d)
    with pytest.raises(DataError, match="does not exist"):
        C.wikitext_corpus(tmp_path / "nope")
    with pytest.raises(ConfigError):
        C.load_corpus(text_files=[d / "wiki.train.tokens"], wikitext=d)


def test_bpe_tokenizer_and_cache(tmp_path):
    corpus = C.text_files_corpus([write_text(tmp_path / "t.txt", 300)])
    tc = C.tokenize_corpus(corpus, vocab_size=300, cache_dir=tmp_path / "cache")
    assert tc.vocab_size == 300
    for s in C.SPLITS:   # byte-level: decoding gives the text back exactly
        assert tc.tokenizer.decode(tc.ids[s].tolist()) == corpus.splits[s]
        assert int(tc.ids[s].max()) < 300
    # common words became single tokens
    assert any(len(tc.tokenizer.encode(" " + w).ids) == 1 for w in WORDS)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert sum(n.startswith("tokenizer-") for n in cached) == 1 and sum(n.startswith("tokens-") for n in cached) == 3
    again = C.tokenize_corpus(corpus, vocab_size=300, cache_dir=tmp_path / "cache")
    assert again.tokenizer_json == tc.tokenizer_json
    assert all(torch.equal(again.ids[s], tc.ids[s]) for s in C.SPLITS)
    # plain bytes
    raw = C.tokenize_corpus(corpus, vocab_size=256)
    assert raw.ids["train"].numel() == len(corpus.splits["train"].encode("utf-8"))
    with pytest.raises(ConfigError, match="from 256"):
        C.tokenize_corpus(corpus, vocab_size=100)
    with pytest.raises(ConfigError, match="1,048,576"):      # refused before any training
        C.tokenize_corpus(corpus, vocab_size=100_000_000)
    # a user tokenizer.json
    path = tc.save_tokenizer(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    user = C.tokenize_corpus(corpus, tokenizer=path)
    assert torch.equal(user.ids["test"], tc.ids["test"]) and "user tokenizer" in user.tokenizer_source


def test_analyze_uses_the_run_tokenizer(tmp_path, capsys, monkeypatch):
    from train_helpers import run_cli, tiny_args

    monkeypatch.setenv("TOKENDYN_CACHE", str(tmp_path / "cache"))
    text = write_text(tmp_path / "t.txt")
    run = tmp_path / "run"
    assert run_cli(tiny_args(text, run, "--steps", "2"), capsys)[0] == 0
    code, _ = run_cli(["analyze", run / "checkpoint", "--text", text, "--max-tokens", "64", "--truncate",
                       "--out", tmp_path / "an"], capsys)
    assert code == 0
    import json

    data = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert data["input"]["tokenizer"] == str(run / "checkpoint" / "tokenizer.json")


@pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible program (bible-kjv)")
def test_builtin_corpus_split():
    corpus = C.builtin_corpus()
    chars = {s: len(corpus.splits[s]) for s in C.SPLITS}
    total = sum(chars.values())
    assert 0.045 < chars["validation"] / total < 0.055 and 0.045 < chars["test"] / total < 0.055
    assert corpus.splits["train"].startswith("In the beginning God created")
    assert corpus.splits["test"].rstrip().endswith("Amen.")      # block 99 (the end of Revelation) is test
