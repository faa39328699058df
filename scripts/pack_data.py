"""Pack the built-in data for a machine without the Debian packages (a GPU node, a container).

    python scripts/pack_data.py [DIR]          (default DIR: .gpudata in the repository)

DIR then holds what scripts/grid_gpu.sh reads there:

- ``kjv.txt`` and ``bin/bible``: the output of ``bible -f -m 8192 Gen1:1-Rev22:21`` and a script
  that prints it, so the KJV source reads the same verses without the bible-kjv package;
- ``pkgroot.tar.xz``: the files of the other english-corpus sources
  (:data:`tokendyn.data.debian_text.SOURCES`: the same patterns the corpus reads), packed relative
  to the package root, to unpack anywhere and name with ``TOKENDYN_PACKAGE_ROOT``;
- ``fashion-mnist/``: the four IDX files of Fashion-MNIST, where they are installed;
- ``MANIFEST.json``: every source's record as a result file keeps it (files, chars, the sha256 of
  its text), to compare with a committed run's composition before a run.

Run it where the packages are installed (``bash scripts/setup.sh`` installs them). A source whose
files are missing stops the script with one sentence; Fashion-MNIST is optional (only the reorder
experiment reads it) and is left out, with a note, where it is not installed.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokendyn.data import debian_text, images, text  # noqa: E402
from tokendyn.errors import TokendynError  # noqa: E402

BIBLE_SCRIPT = '#!/bin/sh\n# prints the packed KJV (bible -f -m 8192 Gen1:1-Rev22:21); arguments are ignored\n' \
               'cat "$(dirname "$(readlink -f "$0")")/../kjv.txt"\n'


def pack_bible(out: Path) -> None:
    """kjv.txt (the bible program's raw output) and bin/bible, which prints it."""
    raw = text.bible_raw_output()
    (out / "kjv.txt").write_text(raw, encoding="utf-8")
    script = out / "bin" / "bible"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(BIBLE_SCRIPT, encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def pack_sources(out: Path, root: Path) -> dict:
    """pkgroot.tar.xz with every file the file-based sources read under ``root``; per source, the
    record a result file keeps of it (:func:`debian_text.read_sources`: files, chars, sha256)."""
    manifest = {}
    records = debian_text.read_sources(root=root)    # DataError, in one sentence, where one is missing
    with tarfile.open(out / "pkgroot.tar.xz", "w:xz") as tar:
        for source, _, record in records:
            for path in source.files(root) if source.program is None else ():
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
            manifest[source.key] = record
    return manifest


def pack_fashion_mnist(out: Path) -> dict | None:
    """fashion-mnist/ with the four IDX files (as installed, gzipped or not), or None where they are
    not installed."""
    names = [name for pair in images.FASHION_MNIST_FILES.values() for name in pair]
    found = [images.find_idx(images.FASHION_MNIST_DIR, name) for name in names]
    if None in found:
        return None
    dest = out / "fashion-mnist"
    dest.mkdir(exist_ok=True)
    for path in found:
        shutil.copyfile(path, dest / path.name)
    return {"files": len(found), "bytes": sum(p.stat().st_size for p in found)}


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python scripts/pack_data.py [DIR]", file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else ROOT / ".gpudata"     # where grid_gpu.sh looks, from any working folder
    if out.exists() and not out.is_dir():
        print(f"pack_data.py: {out} exists and is not a directory.", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        pack_bible(out)
        manifest = pack_sources(out, debian_text.package_root())
        fashion = pack_fashion_mnist(out)
    except TokendynError as err:
        print(f"pack_data.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"pack_data.py: cannot write into {out}: {err.strerror or err}.", file=sys.stderr)
        return 1
    if fashion is None:
        print("pack_data.py: Fashion-MNIST is not installed (dataset-fashion-mnist); left out.", file=sys.stderr)
    else:
        manifest["fashion-mnist"] = fashion
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed into {out}: {', '.join(manifest)} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
