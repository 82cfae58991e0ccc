"""Outputs never lose data (issue 11): never onto the input, never replacing something that is
not a regular file, all or nothing with external files, checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vaecompress.api import compress, external_path, save
from vaecompress.cli import main
from vaecompress.codecs import CodecContext
from vaecompress.errors import UserError
from vaecompress.files import check_outputs
from vaecompress.io import save_weights_file

ZSTD = ["--codec", "zstd", "--quiet"]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("vaecompress: error:"), err
    return err


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "m.safetensors"
    save_weights_file(path, {"w": torch.randn(8, 8), "b": torch.randn(8)})
    return path


def test_compress_onto_its_input_is_refused(weights: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    before = weights.read_bytes()
    assert main(["compress", str(weights), "-o", str(weights), *ZSTD]) == 2
    assert "is the input" in _err(capsys)
    # The same file by another name: a relative path, a hard link.
    link = weights.with_name("hard.safetensors")
    os.link(weights, link)
    assert main(["compress", str(weights), "-o", str(link), *ZSTD]) == 2
    assert main(["compress", str(weights), "-o",
                 str(weights.parent / "." / weights.name), *ZSTD]) == 2
    assert weights.read_bytes() == before


def test_decompress_onto_its_input_or_its_decoder_is_refused(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packed = tmp_path / "m.vaec"
    assert main(["compress", str(weights), "-o", str(packed), *ZSTD]) == 0
    before = packed.read_bytes()
    assert main(["decompress", str(packed), "-o", str(packed)]) == 2
    assert "is the input" in _err(capsys)
    assert packed.read_bytes() == before
    dec = tmp_path / "dec.safetensors"
    dec.write_bytes(b"x")
    assert main(["decompress", str(packed), "-o", str(dec), "--external", f"d={dec}"]) == 2
    assert dec.read_bytes() == b"x"


def test_external_output_onto_the_input_is_refused(weights: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = weights.read_bytes()
    argv = ["compress", str(weights), "-o", str(tmp_path / "o.vaec"), "--codec", "vae-paper",
            "--decoder-out", str(weights), "--quiet"]
    assert main(argv) == 2
    assert "is the input" in _err(capsys)
    assert weights.read_bytes() == before
    argv[-2] = str(tmp_path / "o.vaec")
    assert main(argv) == 2
    assert "same file" in _err(capsys)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "folder"])
def test_output_that_is_not_a_regular_file_is_refused(
        kind: str, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out"
    if kind == "symlink":
        victim = tmp_path / "victim.bin"
        victim.write_bytes(b"keep")
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    else:
        target.mkdir()
    assert main(["compress", str(weights), "-o", str(target), *ZSTD]) == 2
    assert "refusing to replace" in _err(capsys)
    if kind == "symlink":
        assert target.is_symlink() and (tmp_path / "victim.bin").read_bytes() == b"keep"
    if kind == "fifo":
        assert not target.is_file() and target.exists()
    packed = tmp_path / "m.vaec"
    assert main(["compress", str(weights), "-o", str(packed), *ZSTD]) == 0
    assert main(["decompress", str(packed), "-o", str(target)]) == 2
    _err(capsys)


def test_missing_output_folder_is_found_before_the_work(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import vaecompress.api as api

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("compressed before checking the output folder")

    monkeypatch.setattr(api, "compress", no_work)
    out = tmp_path / "missing" / "m.vaec"
    assert main(["compress", str(weights), "-o", str(out), "--codec", "vae-paper"]) == 2
    assert "output folder does not exist" in _err(capsys)
    assert main(["compress", str(weights), "-o", str(tmp_path / "o.vaec"), "--codec",
                 "vae-paper", "--decoder-out", str(out)]) == 2
    assert "output folder does not exist" in _err(capsys)


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the system answers for the folder decides, whoever runs the test (root may write
    anywhere, so the answer is given here rather than made with chmod)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access

    def access(path: object, mode: int, **kw: object) -> bool:
        return False if Path(str(path)) == locked else real(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UserError, match="not writable"):
        check_outputs([locked / "x"])
    check_outputs([tmp_path / "x"])  # its parent answers yes


def test_no_orphan_external_when_the_main_file_fails(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"w": torch.randn(64, 64) * 0.1}
    res = compress(state, "vae-paper", ctx=CodecContext(progress=False), chunk_size=64,
                   latent=4, hidden=(8,), n_variants=4, epochs=1, patience=1, batch_size=4,
                   external_decoder=True)
    out = tmp_path / "m.vaec"
    real_replace = os.replace

    def fail_on_main(src: str, dst: str | Path) -> None:
        if Path(dst) == out:
            raise OSError("disk full")
        real_replace(src, dst)

    # A failure while writing the temps: nothing at all is left.
    import vaecompress.files as io

    real_fdopen = os.fdopen
    calls = []

    def fail_second(fd: int, mode: str = "r", *a: object, **k: object):  # type: ignore[no-untyped-def]
        calls.append(fd)
        if len(calls) == 2:
            os.close(fd)
            raise OSError("no space left")
        return real_fdopen(fd, mode, *a, **k)

    monkeypatch.setattr(io.os, "fdopen", fail_second)
    with pytest.raises(OSError, match="no space"):
        save(res, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(io.os, "fdopen", real_fdopen)
    save(res, out)
    assert out.is_file() and external_path(out, "decoder").is_file()


def test_sigterm_during_compress_leaves_no_temp_file(weights: Path, tmp_path: Path) -> None:
    """A terminated run unwinds like Ctrl-C: exit 130 and no hidden temp file beside the
    output (SIGKILL cannot be caught: its temp files start with '.' and end in '.tmp')."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "import vaecompress.files as io\n"
        "real = io.os.replace\n"
        "def slow(src, dst):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real(src, dst)\n"
        "io.os.replace = slow\n"
        "from vaecompress.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "o.vaec"
    proc = subprocess.run([sys.executable, "-c", code, "compress", str(weights), "-o", str(out),
                           *ZSTD], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 130, proc.stderr
    # the handler turned the signal into an orderly exit: one line, no traceback
    assert proc.stderr.strip().splitlines() == ["vaecompress: interrupted"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
