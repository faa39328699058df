"""The built-in english corpus: text from Debian packages read under a package root, the
dictionary's clean-up, each source split on its own, the composition recorded, and the errors
for missing or damaged package files. The package files are made here, in a temporary root."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from tokendyn.data import corpus as C
from tokendyn.data import debian_text as D
from tokendyn.errors import ConfigError, DataError

GCIDE_HEAD = "00-database-url\n   ftp://example\n\n00-database-info\n   notice\n=========\n"


def _entry(i: int) -> str:
    return (f"Word{i} \\Word{i}\\, n.\n   1. The meaning number {i} of a word.\n      [1913 Webster]\n\n"
            f"            A citation for word {i}.   --Author.\n      [WordNet 1.5 +PJC]\n")


def make_root(root, lines: int = 300) -> dict:
    """A package root holding small versions of every file the english corpus reads."""
    files = {
        "usr/share/dictd/gcide.dict.dz": gzip.compress((GCIDE_HEAD + "".join(_entry(i) for i in range(lines)))
                                                       .encode()),
        "usr/share/doc/python3.11/html/_sources/library/b.rst.txt":
            "".join(f"The b module, paragraph {i}.\n" for i in range(lines)).encode(),
        "usr/share/doc/python3.11/html/_sources/a.rst.txt":
            "".join(f"Section a, line {i}.\n" for i in range(lines)).encode(),
        "usr/share/doc/linux-doc-6.1/Documentation/x/one.rst.gz":
            gzip.compress("".join(f"Kernel text {i}.\n" for i in range(lines)).encode()),
        "usr/share/doc/linux-doc-6.1/Documentation/two.rst":
            "".join(f"Plain rst {i}.\n" for i in range(lines)).encode(),
        "usr/share/doc/linux-doc-6.1/Documentation/translations/zh/t.rst.gz": gzip.compress("翻译\n".encode() * lines),
        "usr/share/perl/5.36.0/pod/perlfoo.pod": "".join(f"=head1 Perl {i}\n" for i in range(lines)).encode(),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _sources():
    """The package sources, with the Bible replaced by a fixed text (no bible program needed)."""
    bible = D.Source("kjv", "bible-kjv", "King James Bible",
                     program=lambda: "".join(f"Verse {i} of the fixed text.\n" for i in range(400)))
    return (bible,) + tuple(s for s in D.SOURCES if s.key != "kjv")


def test_gcide_clean_up_drops_the_header_the_source_tags_and_the_indentation():
    raw = GCIDE_HEAD + _entry(1) + _entry(2)
    text = D.clean_gcide(raw)
    assert "database" not in text and "notice" not in text and "[" not in text
    assert text.splitlines()[:3] == ["Word1 \\Word1\\, n.", "1. The meaning number 1 of a word.",
                                     "A citation for word 1.   --Author."]
    # a bracket that is not a source tag stays
    assert D.clean_gcide("head\n=========\nAbbr. [Obs.]\n[Obs.]\n") == "Abbr. [Obs.]\n[Obs.]\n"


def test_files_are_sorted_decompressed_and_translations_left_out(tmp_path):
    make_root(tmp_path)
    linux = next(s for s in D.SOURCES if s.key == "linux")
    names = [p.relative_to(tmp_path).as_posix() for p in linux.files(tmp_path)]
    assert names == ["usr/share/doc/linux-doc-6.1/Documentation/two.rst",
                     "usr/share/doc/linux-doc-6.1/Documentation/x/one.rst.gz"]
    text, n = linux.read(tmp_path)
    assert n == 2 and "Kernel text 299." in text and "Plain rst 0." in text and "翻译" not in text
    python = next(s for s in D.SOURCES if s.key == "python")
    text, _ = python.read(tmp_path)
    assert text.index("Section a") < text.index("The b module")       # path order: a.rst.txt first


def test_english_corpus_splits_every_source_and_records_the_composition(tmp_path, monkeypatch):
    make_root(tmp_path)
    monkeypatch.setenv(D.ROOT_ENV, str(tmp_path))
    corpus = C.english_corpus(_sources())
    comp = corpus.composition
    assert [r["key"] for r in comp] == ["kjv", "gcide", "python", "linux", "perl"]
    for split in C.SPLITS:
        text = corpus.splits[split]
        # every split holds text of every source, in the sources' order
        marks = [text.find(m) for m in ("Verse", "Word", "Section a", "Plain rst", "=head1 Perl")]
        assert all(m >= 0 for m in marks), (split, marks)
        assert sum(r["chars_per_split"][split] for r in comp) == len(text)
    for r in comp:
        assert sum(r["chars_per_split"].values()) == r["chars"]
        assert r["chars_per_split"]["train"] > 10 * r["chars_per_split"]["test"]
    gcide, _ = next(s for s in D.SOURCES if s.key == "gcide").read(tmp_path)
    assert comp[1]["sha256"] == hashlib.sha256(gcide.encode()).hexdigest() and comp[1]["files"] == 1
    desc = corpus.describe()
    assert desc["composition"] == comp and json.loads(json.dumps(desc)) == desc
    assert C.english_corpus(_sources()).fingerprint == corpus.fingerprint        # a function of the files
    # the corpus follows its files
    (tmp_path / "usr/share/perl/5.36.0/pod/perlfoo.pod").write_text("=head1 Changed\n" * 300)
    assert C.english_corpus(_sources()).fingerprint != corpus.fingerprint


def test_missing_or_damaged_package_files(tmp_path, monkeypatch):
    make_root(tmp_path)
    monkeypatch.setenv(D.ROOT_ENV, str(tmp_path))
    (tmp_path / "usr/share/perl/5.36.0/pod/perlfoo.pod").unlink()
    with pytest.raises(DataError, match="needs the Debian package perl-doc.*apt-get install perl-doc"):
        C.english_corpus(_sources())
    make_root(tmp_path)
    (tmp_path / "usr/share/dictd/gcide.dict.dz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gcide.dict.dz is not a valid gzip file"):
        C.english_corpus(_sources())
    with pytest.raises(ConfigError, match="unknown built-in corpus 'latin'"):
        C.load_corpus(builtin="latin")
    with pytest.raises(ConfigError, match="not several"):
        C.load_corpus(text_files=["a.txt"], builtin="english")


def test_the_installed_packages(monkeypatch):
    """The real corpus, where the set-up installed its packages: five sources, about 77M characters."""
    monkeypatch.delenv(D.ROOT_ENV, raising=False)
    if not all(s.files() for s in D.SOURCES if s.program is None):
        pytest.skip("the english corpus's Debian packages are not installed")
    corpus = C.english_corpus()
    assert len(corpus.composition) == 5 and all(r["chars"] > 1_000_000 for r in corpus.composition)
    assert len(corpus.splits["train"]) > 60_000_000
