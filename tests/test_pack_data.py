"""scripts/pack_data.py: the packed data read on a machine without the packages gives the same
corpus, source by source (the same hashes), as the packages it was packed from; and its errors.
The package files and the bible program are made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_english_corpus import make_root

from tokendyn.data import debian_text as D

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pack_data.py"
VERSES = "".join(f"Ge1:{i} Verse {i} of a made-up book.\n" for i in range(1, 300))


def _bible_program(folder: Path) -> Path:
    """A `bible` that prints VERSES whatever its arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "verses.txt").write_text(VERSES, encoding="utf-8")
    exe = folder / "bible"
    exe.write_text(f"#!/bin/sh\ncat '{folder / 'verses.txt'}'\n", encoding="utf-8")
    exe.chmod(0o755)
    return folder


def _python(args, root: Path, path_dirs: list[Path], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """A fresh interpreter with the package root ``root`` and ``path_dirs`` first on PATH."""
    env = dict(os.environ, **{D.ROOT_ENV: str(root)})
    env["PATH"] = os.pathsep.join([str(p) for p in path_dirs] + [env.get("PATH", "")])
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                          **kw)


def _run(args, root: Path, path_dirs: list[Path], cwd: Path):
    return _python([str(SCRIPT), *args], root, path_dirs, cwd)


def _records(root: Path, path_dirs: list[Path]) -> dict:
    """Each source's record as the corpus reads it under ``root`` with ``path_dirs`` first on PATH
    (a fresh interpreter, so the cached verses of this one do not answer)."""
    code = ("import json; from tokendyn.data import debian_text as D; "
            "print(json.dumps({s.key: r['sha256'] for s, _, r in D.read_sources(root=D.package_root())}))")
    return json.loads(_python(["-c", code], root, path_dirs, SCRIPT.parent.parent, check=True).stdout)


def test_the_packed_data_reads_as_the_same_corpus(tmp_path):
    root = tmp_path / "root"
    make_root(root)
    bible = _bible_program(tmp_path / "prog")
    res = _run([str(tmp_path / "pack")], root, [bible], tmp_path)
    assert res.returncode == 0, res.stderr
    pack = tmp_path / "pack"
    manifest = json.loads((pack / "MANIFEST.json").read_text())
    assert set(manifest) >= {s.key for s in D.SOURCES}
    # what the packages give, what the manifest says, and what the unpacked copy gives agree
    before = _records(root, [bible])
    assert {k: manifest[k]["sha256"] for k in before} == before
    unpacked = tmp_path / "unpacked"
    with tarfile.open(pack / "pkgroot.tar.xz") as tar:
        names = tar.getnames()
        tar.extractall(unpacked, filter="data")
    assert not any("translations" in n for n in names)      # only what the corpus reads is packed
    assert _records(unpacked, [pack / "bin"]) == before
    assert (pack / "kjv.txt").read_text() == VERSES


def test_a_missing_package_stops_the_packing_in_one_sentence(tmp_path):
    root = tmp_path / "root"
    make_root(root)
    (root / "usr/share/perl/5.36.0/pod/perlfoo.pod").unlink()
    res = _run([str(tmp_path / "pack")], root, [_bible_program(tmp_path / "prog")], tmp_path)
    assert res.returncode == 1
    assert "perl-doc" in res.stderr and res.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("args", [["a", "b"], ["--help"]])
def test_bad_arguments_print_the_usage(tmp_path, args):
    res = _run(args, tmp_path, [], tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("usage:")


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "pack").write_text("not a folder")
    res = _run([str(tmp_path / "pack")], tmp_path, [], tmp_path)
    assert res.returncode == 2 and "not a directory" in res.stderr


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    res = _run([str(tmp_path / "file" / "pack")], tmp_path, [], tmp_path)
    assert res.returncode == 1 and "cannot write into" in res.stderr and "Traceback" not in res.stderr
