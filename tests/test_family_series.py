"""`family.series`: a run's checkpoints in one file, closed loop, each member read alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from test_cli import _err_line
from vaecompress.api import compress, decompress
from vaecompress.cli import main
from vaecompress.errors import FormatError, UserError
from vaecompress.family import series
from vaecompress.format import load_payloads, loads


def _run(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A toy training run: a random walk of a matrix, a bias and an integer step counter."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    out = []
    for k in range(n):
        w = w + 0.05 * torch.randn(w.shape, generator=g)
        b = b + 0.05 * torch.randn(b.shape, generator=g)
        out.append({"w": w.clone(), "b": b.clone(), "step": torch.tensor(k)})
    return out


def _err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_each_member_rebuilds_as_its_own_file_would(tmp_path: Path) -> None:
    run = _run(5)
    res = series.compress_series(run, "int8", labels=[f"e{k}" for k in range(5)])
    path = tmp_path / "run.vaec"
    path.write_bytes(res.data)
    previous = None
    for k, m in enumerate(res.members):
        alone = decompress(m.data, base=previous)  # the member's own file, its base given
        for member in (k, f"e{k}"):
            got = series.decompress_member(path, member)
            assert list(got) == list(run[k])
            assert all(torch.equal(got[n], alone[n]) for n in got)
            assert m.rebuilt is not None and all(torch.equal(got[n], m.rebuilt[n]) for n in got)
        assert torch.equal(alone["step"], run[k]["step"])
        previous = alone
    everything = series.decompress_all(path)
    assert all(torch.equal(everything[k]["w"], res.members[k].rebuilt["w"]) for k in range(5))
    assert res.ratio == pytest.approx(sum(m.accounting.orig_bytes for m in res.members)
                                      / len(res.data))


def test_errors_do_not_drift_along_20_checkpoints() -> None:
    """Closed loop: member k's error is that of coding one delta, whatever k; coding each
    checkpoint against the previous *original* (open loop) adds the errors up."""
    run = _run(20)
    res = series.compress_series(run, "int8")
    closed = [_err(m.rebuilt, run[k]) for k, m in enumerate(res.members)]  # type: ignore[arg-type]
    # int8 per channel: each weight within half a step of its delta's channel range / 255.
    for k in range(1, 20):
        d = run[k]["w"] - res.members[k - 1].rebuilt["w"]  # type: ignore[index]
        bound = float((d.amax(1) - d.amin(1)).max()) / 255 / 2
        assert _err({"w": res.members[k].rebuilt["w"]}, {"w": run[k]["w"]}) <= bound * 1.001 + 1e-7
    assert max(closed[10:]) <= 1.5 * max(closed[1:10])
    # Open loop, even from an exact first checkpoint: each delta coded against the original
    # previous checkpoint, the reader adding the rebuilt deltas up; the errors accumulate.
    reader = run[0]["w"]
    for k in range(1, 20):
        m = compress(run[k], "int8", base=run[k - 1])
        reader = reader + (m.rebuilt["w"] - run[k - 1]["w"])  # type: ignore[index]
    assert _err({"w": reader}, {"w": run[19]["w"]}) > 3 * max(closed[1:])


def test_rebuilding_a_member_reads_only_its_chain(tmp_path: Path) -> None:
    run = _run(9)
    res = series.compress_series(run, "int8", keyframe_every=4)
    path = tmp_path / "run.vaec"
    data = bytearray(res.data)
    # Damage member 7: members 0..6 still rebuild (they never read it), member 7 does not.
    c = loads(res.data)
    start = len(data) - sum(len(p.data) for p in c.payloads[7:])
    data[start + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    assert series.read_index(load_payloads(path, [])).needed(6) == [4, 5, 6]
    for k in range(7):
        got = series.decompress_member(path, k)
        assert torch.equal(got["w"], res.members[k].rebuilt["w"])  # type: ignore[index]
    with pytest.raises(FormatError, match="payload 'm7' is corrupt"):
        series.decompress_member(path, 7)
    assert series.decompress_member(path, 8)["step"].item() == 8  # a keyframe's chain: 8 only


def test_bad_series_input_is_one_user_error() -> None:
    run = _run(3)
    with pytest.raises(UserError, match="holds other tensors"):
        series.compress_series([run[0], {"w": torch.randn(3, 3)}], "int8")
    with pytest.raises(UserError, match="choose another codec for a series"):
        series.compress_series(run, "vae-paper")
    with pytest.raises(UserError, match="labels"):
        series.compress_series(run, "int8", labels=["a"])
    index = series.SeriesIndex(["a", "b"], 0)
    with pytest.raises(UserError, match=r"2 members \(0..1\), not 5"):
        index.index(5)
    with pytest.raises(UserError, match="no member 'zz'"):
        index.index("zz")


def test_cli_series_from_a_folder_and_a_list(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(4)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for k, state in enumerate(run):  # epoch-10 sorts after epoch-9: natural order
        save_file(state, str(folder / f"epoch-{k * 5}.safetensors"))
    out = tmp_path / "run.vaec"
    assert main(["compress", str(folder), "-o", str(out), "--codec", "int8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4 checkpoints" in printed and "epoch-15" in printed
    rebuilt = tmp_path / "r.safetensors"
    assert main(["decompress", str(out), "-o", str(rebuilt)]) == 2
    assert "checkpoint series of 4 members" in _err_line(capsys)
    assert main(["decompress", str(out), "-o", str(rebuilt), "--member", "epoch-15"]) == 0
    assert torch.equal(series.decompress_member(out, 3)["step"], run[3]["step"])
    assert main(["decompress", str(out), "-o", str(rebuilt), "--member", "9"]) == 2
    assert "4 members" in _err_line(capsys)
    assert main(["inspect", str(out)]) == 0
    assert "checkpoint series of 4 members" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["series"]["members"] == 4
    assert info["series"]["orig_bytes"] == 4 * info["accounting"]["orig_bytes"]
    assert info["series"]["ratio"] == pytest.approx(4 * info["accounting"]["orig_bytes"]
                                                    / out.stat().st_size)
    files = [str(folder / f"epoch-{k * 5}.safetensors") for k in (0, 1)]
    assert main(["compress", *files, str(folder / "epoch-99.safetensors"), "-o",
                 str(tmp_path / "x.vaec"), "--codec", "int8", "--quiet"]) == 2
    assert "epoch-99.safetensors" in _err_line(capsys)
    assert not (tmp_path / "x.vaec").exists()
    single = tmp_path / "one.vaec"
    assert main(["compress", files[0], "-o", str(single), "--codec", "int8", "--quiet"]) == 0
    assert main(["decompress", str(single), "-o", str(rebuilt), "--member", "0"]) == 2
    assert "not a checkpoint series" in _err_line(capsys)


def test_the_series_command_warns_when_checkpoints_collapse_onto_the_one_before(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Late checkpoints that differ from the one before by less than the error the weights may
    take are coded as zeros: rebuilt as the one before. The command says so, member by member."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 32, generator=g)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for k in range(3):
        save_file({"w": w + 1e-4 * k * torch.randn(32, 32, generator=g)},
                  str(folder / f"step-{k}.safetensors"))
    out = tmp_path / "run.vaec"
    for args, warned in ((["--snr", "20", "--set", "change_snr=0"], True),
                         (["--snr", "110", "--set", "change_snr=0"], False),
                         (["--snr", "20"], False)):  # by default each change keeps its own SNR
        assert main(["compress", str(folder), "-o", str(out), *args, "--quiet"]) == 0
        printed = capsys.readouterr().out
        assert printed.count("the change from its base kept at SNR") == 2  # members 1 and 2
        assert ("warning: most of the change from the checkpoint before is lost in 2 of 3 "
                "checkpoints (step-1, step-2)" in printed) == warned
