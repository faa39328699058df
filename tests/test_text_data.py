"""The built-in corpus, text files and tokenizers."""

import shutil

import pytest
import torch

from tokendyn.data import text as td
from tokendyn.errors import DataError

needs_bible = pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible program (bible-kjv)")


@pytest.mark.parametrize("line,expected", [
    ("Ge1:1 In the beginning God created the heaven and the earth.",
     "In the beginning God created the heaven and the earth."),
    ("1Sm3:4 That the LORD called Samuel: and he answered, Here am I.",
     "That the LORD called Samuel: and he answered, Here am I."),
    ("Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.",
     "The grace of our Lord Jesus Christ be with you all. Amen."),
    ("Psa119:176 I have gone astray", "I have gone astray"),
    ("no reference here: 3:16", "no reference here: 3:16"),
])
def test_strip_verse_reference(line, expected):
    assert td.strip_verse_reference(line) == expected


@needs_bible
def test_bible_corpus():
    verses = td.bible_verses()
    assert len(verses) > 30000
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert verses[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert not any(td._VERSE_PREFIX.match(v) for v in verses[:2000])
    head = td.bible_text(max_chars=500)
    assert len(head) == 500 and head.startswith(verses[0] + "\n" + verses[1])


def test_missing_bible_program():
    with pytest.raises(DataError, match="bible-kjv"):
        td.bible_verses(program="tokendyn-no-such-program")


def test_read_text_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n", encoding="utf-8")
    assert td.read_text_file(f) == "hello world\n"
    with pytest.raises(DataError, match="does not exist"):
        td.read_text_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        td.read_text_file(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="UTF-8"):
        td.read_text_file(tmp_path / "bin.txt")


def make_word_tokenizer(path, words):
    """A small word-level tokenizer.json (unknown words -> [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return vocab


def test_tokenizer_roundtrip(tmp_path):
    vocab = make_word_tokenizer(tmp_path / "tokenizer.json", ["in", "the", "beginning"])
    assert td.find_tokenizer(tmp_path) == tmp_path / "tokenizer.json"
    assert td.find_tokenizer(tmp_path / "model.safetensors") == tmp_path / "tokenizer.json"
    tok = td.load_tokenizer(tmp_path)
    ids = td.encode(tok, "in the beginning was the word")
    assert ids.tolist() == [vocab["in"], vocab["the"], vocab["beginning"], 0, vocab["the"], 0]
    (tmp_path / "sub").mkdir()
    assert td.find_tokenizer(tmp_path / "sub") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer"):
        td.load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="does not exist"):
        td.load_tokenizer(tmp_path / "none.json")


@needs_bible
def test_encode_prefix_is_a_prefix(tmp_path):
    make_word_tokenizer(tmp_path / "tokenizer.json", td.bible_text(max_chars=20000).split())
    tok = td.load_tokenizer(tmp_path)
    for n in (1, 37, 700):
        ids = td.encode_prefix(tok, n)
        assert ids.numel() == n
        full = td.encode(tok, td.bible_text(max_chars=60000))
        assert torch.equal(ids, full[:n])


def test_byte_tokens():
    assert td.byte_tokens("Aé").tolist() == [65, 0xC3, 0xA9]
