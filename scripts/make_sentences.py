"""Write the English sentences of the MiniLM task: `src/vaecompress/tasks/data/*.txt`.

    .venv/bin/python scripts/make_sentences.py           # rewrite the three files
    .venv/bin/python scripts/make_sentences.py --check   # exit 1 if any differs
    .venv/bin/python scripts/make_sentences.py --check --sets eval train   # no download

Two sets come from the text CPython ships with every installation (PSF License Version 2,
`data/sentences.LICENSE`), so they are real English prose available offline:

- `eval.txt`, the fidelity set: every prose sentence of the Python Language Reference as shipped
  for `help()` (`pydoc_data.topics`);
- `train.txt`, the distillation set (what `vae-rd`, `prune` and `deep-compression` retrain
  on): prose sentences of the docstrings of the standard library's top-level modules, read with
  `ast` (nothing is imported), minus any sentence of the fidelity set; the first TRAIN of them.

The procedure is deterministic: sources in sorted order, prose paragraphs only (indented blocks
are code or grammar), split into sentences, kept when they read as plain prose (6-40 words,
mostly letters, no grammar or prompt markup), duplicates dropped, then ordered by the sha256 of
each sentence so that any prefix is a fair sample of its source. The files were made with
CPython 3.11.7; another version ships other text, so the committed files are the reference and
this script says how they were made.

The third set is text of another kind, on which no codec default is tuned:

- `heldout.txt`, the held-out fidelity set: narrative sentences of Jane Austen's six novels
  (public domain), the first HELDOUT of them in sha256 order. The novels are read from Debian's
  package `r-cran-janeaustenr` 1.0.0-1 (the R package janeaustenr 1.0.0, MIT License,
  `data/heldout.LICENSE`), downloaded with `apt-get download` (never installed: it would pull in
  R) and checked against its sha256, or given with `--deb PATH`. Its novels are R character
  vectors (one per line of text) in R's lazy-load database `data/Rdata.rdb`; `r_strings` reads
  them with a strict reader that accepts a plain character vector and nothing else. The same
  procedure as above, with two changes for fiction: sentences are not split after "Mr.", "Mrs.",
  "Dr.", "St.", "Rev.", "Hon." or an initial, and only sentences without quotation marks are
  kept (a quoted speech splits badly; the middle sentences of a long one remain); the
  underscores that mark italics are dropped. This set does not depend on the Python version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import re
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src/vaecompress/tasks/data"
TRAIN = 2048
HEADER = (
    "# {what} (CPython {ver}), made by scripts/make_sentences.py.\n"
    "# Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved.\n"
    "# Licensed under the PSF License Version 2 (sentences.LICENSE beside this file).\n"
)
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_BAD = ("::=", ">>>", "***", "===", "---", "...", "|", "{", "}", "\\")

HELDOUT = 1000
AUSTEN_REQUIREMENT = "r-cran-janeaustenr=1.0.0-1"
AUSTEN_DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
AUSTEN_DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
AUSTEN_RDB = "./usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
AUSTEN_TITLES = ("EMMA", "MANSFIELD PARK", "NORTHANGER ABBEY", "PERSUASION",
                 "PRIDE AND PREJUDICE", "SENSE AND SENSIBILITY")
HELDOUT_HEADER = (
    "# Narrative sentences of Jane Austen's six novels (public domain), made by\n"
    "# scripts/make_sentences.py from Debian's r-cran-janeaustenr 1.0.0-1 (janeaustenr 1.0.0,\n"
    "# Copyright (c) 2016-2017 Julia Silge, MIT License: heldout.LICENSE beside this file).\n"
)
_QUOTE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])")
# Fiction: no split after a title or an initial ("Mr. Knightley", "Miss A. Smith").
_SPLIT_FICTION = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bRev\.)"
                            r"(?<!\bHon\.)(?<!\b[A-Z]\.)(?<=[.!?])\s+(?=[A-Z\"(])")


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs: blocks of unindented lines, joined into one line each."""
    out, cur = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip() and not line.startswith((" ", "\t")):
            cur.append(line.strip())
            continue
        if cur:
            out.append(" ".join(cur))
        cur = []
    return out


def is_prose(s: str) -> bool:
    words = s.split()
    if not 6 <= len(words) <= 40 or not s.endswith(".") or any(b in s for b in _BAD):
        return False
    letters = sum(c.isalpha() or c == " " for c in s)
    return letters / len(s) >= 0.85 and s[0].isupper()


def is_narrative(s: str) -> bool:
    """Prose with no quotation marks: no double quotes, and no single quote other than an
    apostrophe between two letters ("Emma's", "don't")."""
    return (is_prose(s) and not any(q in s for q in "\"\u201c\u201d\u2018\u2019")
            and _QUOTE.search(s) is None)


def prose(texts: Iterable[str], split: re.Pattern[str] = _SPLIT,
          keep: Callable[[str], bool] = is_prose) -> list[str]:
    """The distinct prose sentences of `texts`, ordered by their sha256."""
    seen: dict[str, None] = {}
    for text in texts:
        for para in paragraphs(text):
            for s in split.split(re.sub(r"\s+", " ", para)):
                if keep(s):
                    seen.setdefault(s, None)
    return sorted(seen, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def reference_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def docstrings() -> list[str]:
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc:
                    out.append(doc)
    return out


# ---- the held-out set: Jane Austen's novels from Debian's r-cran-janeaustenr ---------------


def fetch_deb(dest: Path) -> Path:
    """Download (never install) the pinned Debian package into `dest`; return its path."""
    print(f"make_sentences: apt-get download {AUSTEN_REQUIREMENT} (1.6 MB)", file=sys.stderr)
    proc = subprocess.run(["apt-get", "download", AUSTEN_REQUIREMENT], cwd=dest,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    path = dest / AUSTEN_DEB
    if proc.returncode != 0 or not path.is_file():
        raise SystemExit(f"apt-get download {AUSTEN_REQUIREMENT} failed (run `apt-get update` "
                         f"first, or pass --deb PATH):\n{proc.stdout}{proc.stderr}")
    return path


def ar_member(archive: bytes, name: str) -> bytes:
    """The member `name` of an ar archive (a .deb)."""
    if archive[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(archive):
        head = archive[pos : pos + 60]
        if head[58:60] != b"`\n":
            raise ValueError(f"bad ar header at {pos}")
        size = int(head[48:58])
        if head[:16].decode("ascii").strip().rstrip("/") == name:
            return archive[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2
    raise ValueError(f"no member {name}")


def rdb_objects(rdb: bytes) -> list[bytes]:
    """The serialized objects of an R lazy-load database, in file order: each a big-endian
    uint32 length, then that many bytes deflated by zlib."""
    out, pos = [], 0
    while pos < len(rdb):
        (n,) = struct.unpack_from(">I", rdb, pos)
        d = zlib.decompressobj()
        blob = d.decompress(rdb[pos + 4 :])
        if len(blob) != n or not d.eof:
            raise ValueError(f"bad zlib object at {pos}")
        out.append(blob)
        pos = len(rdb) - len(d.unused_data)
    return out


def r_strings(blob: bytes) -> list[str]:
    """The elements of an R character vector serialized by R (XDR format, version 2 or 3), with
    no attributes; anything else is refused. NA elements read as ""."""
    ints = struct.Struct(">i")
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise ValueError("truncated R serialization")
        pos += n
        return blob[pos - n : pos]

    def integer() -> int:
        return int(ints.unpack(take(4))[0])

    if take(2) != b"X\n":
        raise ValueError("not R's XDR serialization")
    version = integer()
    if version not in (2, 3):
        raise ValueError(f"R serialization version {version}")
    integer(), integer()  # writer's and minimal reader's R versions
    if version == 3:
        take(integer())  # the writer's native encoding
    flags = integer()
    if flags & 0xFF != 16 or flags & 0x700:  # STRSXP, and no object/attribute/tag bits
        raise ValueError(f"not a plain character vector (flags {flags:#x})")
    n = integer()
    if n < 0:
        raise ValueError("long vectors are not expected here")
    out = []
    for _ in range(n):
        flags = integer()
        if flags & 0xFF != 9:  # CHARSXP
            raise ValueError(f"not a string (flags {flags:#x})")
        size = integer()
        if size == -1:
            out.append("")
            continue
        latin1 = (flags >> 12) & 4
        out.append(take(size).decode("latin-1" if latin1 else "utf-8"))
    if pos != len(blob):
        raise ValueError("trailing bytes after the character vector")
    return out


def austen_texts(deb: Path | None = None) -> list[str]:
    """The six novels' texts, in the order of their titles, from the pinned package."""
    with tempfile.TemporaryDirectory() as tmp:
        data = (deb or fetch_deb(Path(tmp))).read_bytes()
    if hashlib.sha256(data).hexdigest() != AUSTEN_DEB_SHA256:
        raise SystemExit(f"{AUSTEN_DEB}: sha256 differs from the pinned one")
    with tarfile.open(fileobj=io.BytesIO(ar_member(data, "data.tar.xz")), mode="r:xz") as tar:
        member = tar.extractfile(AUSTEN_RDB)
        assert member is not None
        rdb = member.read()
    books = {lines[0].upper(): lines for lines in map(r_strings, rdb_objects(rdb))}
    if tuple(sorted(books)) != AUSTEN_TITLES:
        raise SystemExit(f"unexpected novels in {AUSTEN_DEB}: {sorted(books)}")
    return ["\n".join(books[t]).replace("_", "") for t in AUSTEN_TITLES]


def heldout(deb: Path | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """The held-out sentences: the first HELDOUT narrative ones, none of them in `exclude`."""
    seen = set(exclude)
    return [s for s in prose(austen_texts(deb), _SPLIT_FICTION, is_narrative)
            if s not in seen][:HELDOUT]


# ---- the files ------------------------------------------------------------------------------

SETS = ("eval", "train", "heldout")


def render(sets: Iterable[str] = SETS, deb: Path | None = None) -> dict[str, str]:
    sets = set(sets)
    ver = ".".join(map(str, sys.version_info[:3]))
    evals = prose(reference_texts())
    held = set(evals)
    train = [s for s in prose(docstrings()) if s not in held][:TRAIN]
    what = {"eval.txt": "Sentences of the Python Language Reference, pydoc_data.topics",
            "train.txt": "Sentences of the docstrings of the standard library's modules"}
    out = {name: HEADER.format(what=what[name], ver=ver) + "".join(s + "\n" for s in sents)
           for name, sents in (("eval.txt", evals), ("train.txt", train))
           if name.removesuffix(".txt") in sets}
    if "heldout" in sets:
        out["heldout.txt"] = HELDOUT_HEADER + "".join(
            s + "\n" for s in heldout(deb, exclude=[*evals, *train]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                   help="which files to make or check (default: all three)")
    p.add_argument("--deb", type=Path, help=f"a downloaded {AUSTEN_DEB} (else apt-get download)")
    args = p.parse_args(argv)
    files = render(args.sets, args.deb)
    if args.check:
        stale = [n for n, text in files.items()
                 if not (DATA / n).is_file() or (DATA / n).read_text() != text]
        print(f"differ from the source: {', '.join(stale)}" if stale else "up to date")
        return 1 if stale else 0
    DATA.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (DATA / name).write_text(text)
        print(f"{DATA / name}: {text.count(chr(10)) - 3} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
