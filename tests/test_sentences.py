"""The held-out sentence set (Jane Austen's novels): the committed file, the script's strict
readers of the Debian package it comes from, and MiniLM's fidelity on it.

The file checks and the readers run everywhere and need no network; the fidelity tests skip
without the optional extra `minilm`; the check of the file against its source runs only where
$VAECOMPRESS_AUSTEN_DEB names a downloaded r-cran-janeaustenr_1.0.0-1_all.deb.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import load_script
from vaecompress.tasks.sentence import DATA, EVAL_SETS, read_sentences
from vaecompress.zoo import minilm

ROOT = Path(__file__).resolve().parents[1]
make = load_script("scripts/make_sentences.py", "vaecompress_make_sentences")

needs_minilm = pytest.mark.skipif(minilm.missing() is not None,
                                  reason="optional extra 'minilm' not installed")


# ------------------------------------------------------------------ the committed file


def test_heldout_parses_with_the_expected_count_and_header() -> None:
    text = (DATA / "heldout.txt").read_text(encoding="utf-8")
    assert text.startswith(make.HELDOUT_HEADER)
    held = read_sentences("heldout")
    assert len(held) == make.HELDOUT == 1000 and len(set(held)) == len(held)
    assert len(text.splitlines()) == len(held) + 3
    assert all(make.is_narrative(s) and "_" not in s for s in held)
    assert (DATA / "heldout.LICENSE").read_text().count(make.AUSTEN_DEB_SHA256) == 1


def test_heldout_is_disjoint_from_the_training_and_fidelity_sets() -> None:
    held = set(read_sentences("heldout"))
    assert not held & set(read_sentences("train"))
    assert not held & set(read_sentences("eval"))


def test_unknown_set_is_refused() -> None:
    with pytest.raises(ValueError, match="heldout"):
        read_sentences("../eval")


def test_fiction_split_keeps_titles_and_initials() -> None:
    para = "Mr. Knightley and Mrs. Weston saw Miss A. Smith. She was not at home today at all."
    assert make._SPLIT_FICTION.split(para) == [
        "Mr. Knightley and Mrs. Weston saw Miss A. Smith.", "She was not at home today at all."]
    assert not make.is_narrative("'You must go,' said she to her dear sister Jane.")
    assert make.is_narrative("Emma's father was not quite easy about the long walk.")


# ------------------------------------------------------------------ the package's readers


def _r_strings_blob(items: list[str | None], version: int = 3, flags: int = 16) -> bytes:
    out = b"X\n" + struct.pack(">iii", version, 0x40201, 0x30500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", flags, len(items))
    for s in items:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            raw = s.encode()
            out += struct.pack(">ii", 0x8009, len(raw)) + raw
    return out


def test_r_strings_reads_a_plain_character_vector_and_nothing_else() -> None:
    got = make.r_strings(_r_strings_blob(["EMMA", None, "Émma wept."]))
    assert got == ["EMMA", "", "Émma wept."]
    assert make.r_strings(_r_strings_blob(["a"], version=2)) == ["a"]
    for bad in (_r_strings_blob(["a"], flags=19),  # a list
                _r_strings_blob(["a"], flags=16 | 0x200),  # with attributes
                _r_strings_blob(["a"]) + b"\0",  # trailing bytes
                _r_strings_blob(["abc"])[:-1],  # truncated
                b"A\n" + _r_strings_blob(["a"])[2:]):  # ASCII serialization
        with pytest.raises(ValueError):
            make.r_strings(bad)


def test_rdb_objects_and_ar_member_find_the_novels() -> None:
    books = [["PERSUASION", "", "Sir Walter Elliot was vain."], ["EMMA", "", "Emma was clever."]]
    blobs = [_r_strings_blob(b) for b in books]
    rdb = b"".join(struct.pack(">I", len(b)) + zlib.compress(b) for b in blobs)
    assert make.rdb_objects(rdb) == blobs
    with pytest.raises(ValueError):
        make.rdb_objects(rdb[:-3])
    ar = b"!<arch>\n"
    for name, data in (("debian-binary", b"2.0\n"), ("data.tar.xz", b"xyz")):
        ar += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        ar += data + b"\n" * (len(data) % 2)
    assert make.ar_member(ar, "data.tar.xz") == b"xyz"
    with pytest.raises(ValueError):
        make.ar_member(ar, "control.tar.xz")
    assert make.ar_member(ar, "debian-binary") == b"2.0\n"


@pytest.mark.skipif(not os.environ.get("VAECOMPRESS_AUSTEN_DEB"),
                    reason="set VAECOMPRESS_AUSTEN_DEB to a downloaded "
                           "r-cran-janeaustenr_1.0.0-1_all.deb")
def test_heldout_file_is_what_the_script_makes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/make_sentences.py"), "--check",
                           "--sets", "heldout", "--deb", os.environ["VAECOMPRESS_AUSTEN_DEB"]],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ with the extra


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    if minilm.missing() is not None:
        pytest.skip("optional extra 'minilm' not installed")
    from vaecompress.tasks.sentence import SentenceTask

    return SentenceTask(n_eval=48, n_train=64, eval_set="heldout")


@needs_minilm
def test_heldout_fidelity_of_the_original_is_one(task) -> None:  # type: ignore[no-untyped-def]
    assert task.eval_set == "heldout" and task.eval_sentences == read_sentences("heldout")[:48]
    import torch

    # the same embeddings bit for bit; their cosine is 1 up to float32 rounding (|e|^2 summed)
    assert torch.equal(task.embed(task.reference), task.eval_ref)
    fid = task.fidelity(task.reference)
    assert fid["nn_same"] == 1.0 and fid["n_sentences"] == 48
    assert fid["cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert fid["cos_min"] == pytest.approx(1.0, abs=1e-6)
    assert task.fidelity(task.reference, eval_set="heldout") == fid


@needs_minilm
def test_fidelity_sets_are_separate_and_kept(task) -> None:  # type: ignore[no-untyped-def]
    import torch

    ev = task.fidelity_set("eval")
    assert ev.sentences == read_sentences("eval")[:48] and task.fidelity_set("eval") is ev
    assert set(EVAL_SETS) == {"eval", "heldout"}
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=gen)
             if v.is_floating_point() else v for k, v in task.reference.items()}
    on_eval, on_held = task.fidelity(noisy, eval_set="eval"), task.fidelity(noisy)
    assert on_eval != on_held and on_held["cos_mean"] < 0.99
    with pytest.raises(ValueError, match="eval_set"):
        task.fidelity(noisy, eval_set="train")
