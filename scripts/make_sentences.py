"""Write the English sentences of the MiniLM task: `src/vaecompress/tasks/data/*.txt`.

    .venv/bin/python scripts/make_sentences.py           # rewrite both files
    .venv/bin/python scripts/make_sentences.py --check   # exit 1 if either differs

Both sets come from the text CPython ships with every installation (PSF License Version 2,
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
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterable
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


def prose(texts: Iterable[str]) -> list[str]:
    """The distinct prose sentences of `texts`, ordered by their sha256."""
    seen: dict[str, None] = {}
    for text in texts:
        for para in paragraphs(text):
            for s in _SPLIT.split(re.sub(r"\s+", " ", para)):
                if is_prose(s):
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


def render() -> dict[str, str]:
    ver = ".".join(map(str, sys.version_info[:3]))
    evals = prose(reference_texts())
    held = set(evals)
    train = [s for s in prose(docstrings()) if s not in held][:TRAIN]
    what = {"eval.txt": "Sentences of the Python Language Reference, pydoc_data.topics",
            "train.txt": "Sentences of the docstrings of the standard library's modules"}
    return {name: HEADER.format(what=what[name], ver=ver) + "".join(s + "\n" for s in sents)
            for name, sents in (("eval.txt", evals), ("train.txt", train))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    files = render()
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
