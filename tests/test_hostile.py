"""Hostile and careless inputs (issue 21): files that declare more than they hold, header edits
with every integrity field recomputed, names no file system or safetensors takes, inputs that
are not files. The crafted files are made by `scripts/hostile.py` (no committed binaries);
`python scripts/hostile.py` runs the large versions and writes the results docs/format.md shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import load_script
from vaecompress.api import DECODED_KEY, compress, decompress
from vaecompress.cli import main
from vaecompress.errors import FormatError, UserError
from vaecompress.format import FORMAT_VERSION, Payload, dumps, loads
from vaecompress.io import load_weights_file, save_weights_file

hostile = load_script("scripts/hostile.py", "vaecompress_hostile")

MB = 2**20


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(30, 60, generator=g), "a.bias": torch.randn(30, generator=g),
            "b.weight": torch.randn(30, 60, generator=g), "steps": torch.tensor(3)}


@pytest.fixture(scope="module")
def zstd_file() -> bytes:
    return compress(_state(), "zstd").data


@pytest.fixture(scope="module")
def vae_file() -> bytes:
    return compress(_state(), "vae-paper", **hostile.VAE_PAPER_TINY).data


def _edit(data: bytes, fn) -> bytes:  # type: ignore[no-untyped-def]
    """Apply `fn` to the parsed container and write it back: CRC and sha256s recomputed."""
    c = loads(data)
    fn(c)
    return dumps(c)


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own (for inputs that could hang it)."""
    return subprocess.run([sys.executable, "-m", "vaecompress.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The command line in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- 1: memory bounded by the work


def _peak_limit(declared: int) -> float:
    """What a decode may use above its base: the rebuilt tensors (declared bytes) once more
    for the float32 work, and 48 MB of fixed cost; before issue 21 these took 7-8 times."""
    return 2 * declared / MB + 48


@pytest.mark.parametrize("make", [hostile.vae_rd_const, hostile.int8_const,
                                  hostile.kmeans_const, hostile.deep_compression_const],
                         ids=["vae-rd", "int8", "kmeans", "deep-compression"])
def test_constant_stream_decodes_within_its_declared_size(make) -> None:  # type: ignore[no-untyped-def]
    n = 2**24  # 64 MiB of float32 from a file of a few hundred bytes
    data = make(n)
    assert len(data) < 1200
    r = hostile.measure(data)
    assert r["outcome"] == "decoded", r
    assert r["peak_mb_above_base"] <= _peak_limit(4 * n), r


def test_zstd_frame_larger_than_the_manifest_is_refused_before_decompressing() -> None:
    data = hostile.zstd_frame_lies(512 * MB)  # 16 KB of frame, 512 MiB of zeros
    assert len(data) < 20_000
    r = hostile.measure(data)
    assert r["outcome"] == "rejected" and "frame" in r["message"], r
    assert r["peak_mb_above_base"] < 32, r


@pytest.mark.parametrize("declare", [2**40, 2**31, 17, 15, -1])
def test_zstd_frame_content_size_must_be_the_manifests(declare: int) -> None:
    data = hostile.zstd_frame_claims(declare)
    if declare == -1:  # no declared size: bounded by the manifest's, and it is the right one
        assert torch.equal(decompress(data)["w"], torch.zeros(4))
        return
    with pytest.raises(FormatError, match="frame"):
        decompress(data)


def test_prune_huge_declared_shape_is_one_line_exit_2(tmp_path: Path) -> None:
    """8 GiB of pruned zeros declared by an 8 KB file, decoded under a 3 GiB address-space
    limit: not an allocator error (exit 1) but one line, exit 2."""
    f = tmp_path / "p.vaec"
    f.write_bytes(hostile.prune_huge(2**31))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
            "from vaecompress.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "decompress", str(f), "-o",
                        str(tmp_path / "out.safetensors")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "memory" in p.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_vae_paper_many_declared_layers_refused_before_building() -> None:
    r = hostile.measure(hostile.vae_paper_layers(120_000), timeout_s=60)
    assert r["outcome"] == "rejected", r
    assert r["decode_s"] < 5, r


# ---------------------------------------------------------------- 2: a checksum that binds meaning


def _swap_names(c) -> None:  # type: ignore[no-untyped-def]
    t = c.tensors
    t[0]["name"], t[2]["name"] = t[2]["name"], t[0]["name"]


def _transpose(c) -> None:  # type: ignore[no-untyped-def]
    c.tensors[0]["shape"] = [60, 30]


def _reorder(c) -> None:  # type: ignore[no-untyped-def]
    c.tensors[0], c.tensors[2] = c.tensors[2], c.tensors[0]


@pytest.mark.parametrize("edit", [_swap_names, _transpose, _reorder])
@pytest.mark.parametrize("which", ["zstd", "vae-paper"])
def test_header_edits_with_recomputed_crc_are_refused(edit, which: str, zstd_file: bytes,  # type: ignore[no-untyped-def]
                                                      vae_file: bytes) -> None:
    data = zstd_file if which == "zstd" else vae_file
    decompress(data)
    with pytest.raises(FormatError, match=r"checksum|layout"):
        decompress(_edit(data, edit))


@pytest.mark.parametrize("which", ["zstd", "vae-paper"])
def test_current_files_without_the_checksum_are_refused(which: str, zstd_file: bytes,
                                                        vae_file: bytes) -> None:
    data = zstd_file if which == "zstd" else vae_file
    assert loads(data).format_version == FORMAT_VERSION
    with pytest.raises(FormatError, match="no checksum"):
        decompress(_edit(data, lambda c: c.meta.pop(DECODED_KEY)))
    c = loads(data)  # format 3, which first required it, the same
    c.meta.pop(DECODED_KEY)
    with pytest.raises(FormatError, match="no checksum"):
        decompress(dumps(c, version=3))


def test_version_2_files_keep_their_own_check(zstd_file: bytes) -> None:
    """Files of format 2 (written before issue 21) are read with the bytes-only digest they
    carry; a damaged one is still refused."""
    from vaecompress import checksum

    c = loads(zstd_file)
    state = decompress(zstd_file)
    c.meta[DECODED_KEY] = {"sha256": checksum.bytes_sha256(state)}
    old = dumps(c, version=2)
    assert all(torch.equal(a, b) for a, b in zip(decompress(old).values(), state.values(),
                                                 strict=True))
    c.meta[DECODED_KEY] = {"sha256": "0" * 64}
    with pytest.raises(FormatError, match="checksum"):
        decompress(dumps(c, version=2))


# ---------------------------------------------------------------- 3: vae-paper's tolerance


def test_vae_paper_one_flipped_byte_is_refused_or_within_the_bound(vae_file: bytes) -> None:
    """Every single flipped byte of the latents (and a spread of the decoder's bytes) is either
    refused or leaves each tensor within the derived bound of its scale."""
    from vaecompress import checksum

    ref = decompress(vae_file)
    c = loads(vae_file)
    accepted = refused = 0
    for p in c.payloads:
        if p.name not in ("latents", "decoder"):
            continue
        step = 1 if p.name == "latents" else max(1, len(p.data) // 97)
        for i in range(0, len(p.data), step):
            blob = bytearray(p.data)
            blob[i] ^= 0xFF
            flipped = loads(vae_file)
            flipped.payloads = [Payload(q.name, q.kind, q.role, bytes(blob))
                                if q.name == p.name else q for q in flipped.payloads]
            try:
                out = decompress(dumps(flipped))
            except (FormatError, UserError):
                refused += 1
                continue
            accepted += 1
            for name, t in out.items():
                if not t.is_floating_point() or not t.numel():
                    continue
                err = float((t.double() - ref[name].double()).abs().max())
                scale = float(ref[name].double().abs().max())
                bound = checksum.detectable_fraction(str(t.dtype).removeprefix("torch."))
                assert err <= bound * scale, (p.name, i, name, err / scale)
    assert refused > 0


# ---------------------------------------------------------------- 4: names that round-trip

NAMES = ["a/b/../c", "/abs/path", "nul\x00byte", "x" * 1024, "new\nline", "tab\tand space",
         "ünï", "dots...", "."]
REFUSED = ["", "__metadata__", "x" * 1025]


def _id(name: str) -> str:
    return repr(name if len(name) < 20 else f"{name[:4]}...x{len(name)}")


@pytest.mark.parametrize("name", NAMES, ids=_id)
@pytest.mark.parametrize("kind", ["float", "int"])
def test_names_round_trip_through_the_cli(name: str, kind: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    t = torch.randn(3, 4) if kind == "float" else torch.arange(12).reshape(3, 4)
    src = tmp_path / "m.safetensors"
    save_weights_file(src, {name: t, "other": torch.ones(2)})
    code, err = _main(capsys, "compress", str(src), "-o", str(tmp_path / "m.vaec"), "--codec",
                      "zstd", "--quiet")
    assert code == 0, err
    code, err = _main(capsys, "decompress", str(tmp_path / "m.vaec"), "-o",
                      str(tmp_path / "r.safetensors"))
    assert code == 0, err
    back, _ = load_weights_file(tmp_path / "r.safetensors")
    given, _ = load_weights_file(src)
    assert list(back) == list(given) and torch.equal(back[name], t)


@pytest.mark.parametrize("name", REFUSED, ids=_id)
@pytest.mark.parametrize("kind", ["float", "int"])
def test_unstorable_names_are_refused_at_compress(name: str, kind: str) -> None:
    t = torch.randn(3) if kind == "float" else torch.arange(3)
    with pytest.raises(UserError, match="name"):
        compress({name: t}, "zstd")


def test_a_metadata_named_tensor_in_a_file_is_refused_in_one_line(tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "h.vaec"
    f.write_bytes(hostile.passthrough_named("__metadata__"))
    code, err = _main(capsys, "decompress", str(f), "-o", str(tmp_path / "o.safetensors"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- 5: external names


@pytest.mark.parametrize("name", ["a/b", "../up", "x" * 1000, "nul\x00x", "new\nline"], ids=_id)
def test_hostile_external_names_are_one_line_exit_2(name: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "e.vaec"
    f.write_bytes(hostile.external_named(name))
    code, err = _main(capsys, "decompress", str(f), "-o", str(tmp_path / "o.safetensors"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- 6: one line, non-files, folders


def test_numpy_warnings_do_not_lengthen_an_error(tmp_path: Path) -> None:
    f = tmp_path / "w.vaec"
    f.write_bytes(hostile.vae_rd_overflow())
    p = _cli("decompress", str(f), "-o", str(tmp_path / "o.safetensors"))  # real stderr
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("command", ["decompress", "compress", "inspect"])
def test_a_fifo_input_is_refused_not_read(command: str, tmp_path: Path) -> None:
    fifo = tmp_path / "in.vaec"
    os.mkfifo(fifo)
    out = str(tmp_path / "out")
    argv = {"decompress": ["decompress", str(fifo), "-o", out],
            "compress": ["compress", str(fifo), "-o", out, "--codec", "zstd", "--quiet"],
            "inspect": ["inspect", str(fifo)]}[command]
    p = _cli(*argv, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "regular file" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("exists", [True, False])
def test_output_with_a_trailing_slash_is_refused(exists: bool, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"w": torch.randn(4, 4)})
    out = tmp_path / "newdir"
    if exists:
        out.mkdir()
    code, err = _main(capsys, "compress", str(src), "-o", f"{out}/", "--codec", "zstd", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "folder" in err
    assert out.is_dir() == exists and not out.is_file()


def test_kill_9_during_a_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """A checkpoint (or any output) being written when the process is killed with SIGKILL
    leaves nothing beside its target: the bytes go to an unnamed file (O_TMPFILE) that gets
    a name only when complete."""
    out, marks = tmp_path / "out", tmp_path / "marks"
    out.mkdir()
    marks.mkdir()
    code = ("import sys, time; from pathlib import Path\n"
            "from vaecompress.files import atomic_write\n"
            "def write(f):\n"
            "    f.write(b'x' * 4096); f.flush(); Path(sys.argv[2]).touch(); time.sleep(60)\n"
            "atomic_write(sys.argv[1], write)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out / ".m.checkpoint"),
                          str(marks / "ready")])
    try:
        for _ in range(600):
            if (marks / "ready").exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert (marks / "ready").exists()
    finally:
        p.kill()
        p.wait()
    assert os.listdir(out) == []


def test_docs_show_the_committed_results() -> None:
    """docs/format.md's "Hostile files" and "Codec fuzzing" tables are the committed results
    files', which have every case of the script, all clean, and 10,000 fuzz cases a codec
    without a crash."""
    summary = json.loads(hostile.RESULTS.read_text())
    assert [r["case"] for r in summary["rows"]] == list(hostile.CASES)
    assert summary["not_clean"] == 0
    doc = (hostile.ROOT / "docs" / "format.md").read_text(encoding="utf-8")
    for name, table in hostile.doc_tables().items():
        shown = doc.split(f"<!-- {name}:begin -->\n")[1].split(f"<!-- {name}:end -->")[0]
        assert shown == table, name
    fuzz = json.loads(hostile.FUZZ_RESULTS.read_text())
    assert fuzz["crashes"] == 0 and all(r["cases"] >= 10_000 and r["crash"] == 0
                                        for r in fuzz["codecs"])
