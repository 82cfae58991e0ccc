"""benchmarks/scaling.py: its arithmetic, its synthetic model, a real worker round, its tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


readme = load_script("scripts/readme.py")
scaling_report = load_script("benchmarks/scaling_report.py")
growth_table, rows_table = scaling_report.growth_table, scaling_report.rows_table


@pytest.fixture(scope="module")
def scaling():  # type: ignore[no-untyped-def]
    return load_script("benchmarks/scaling.py")


def test_slope_is_one_for_linear_growth_and_two_for_quadratic(scaling) -> None:  # type: ignore[no-untyped-def]
    assert scaling.slope([(1e3, 2.0), (1e4, 20.0), (1e6, 2000.0)]) == pytest.approx(1.0)
    assert scaling.slope([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)
    assert scaling.slope([(10, 1.0)]) is None


def test_vae_state_counts_weights_gradients_and_adam(scaling) -> None:  # type: ignore[no-untyped-def]
    from vaecompress.methods.paper.model import VAE, VAEArch

    assert scaling.vae_state_bytes("zstd", {}, 10**6) == 0
    assert scaling.vae_state_bytes("vae-rd-free", {}, 10**6) == 16 * 10**6
    n = sum(p.numel() for p in VAE(VAEArch(2048, 64, (512,))).parameters())
    assert scaling.vae_state_bytes("vae-paper", {"latent": 64}, 10**6) == 16 * n


def test_synthetic_model_is_seeded_and_heavy_tailed(scaling, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(scaling, "SYNTH_BLOCKS", 2)
    monkeypatch.setattr(scaling, "SYNTH_DIM", 64)
    a, b = scaling.synthetic_state(), scaling.synthetic_state()
    assert len(a) == 16 and all(a[k].equal(b[k]) for k in a)
    w = a["block0.q.weight"]
    assert 0.019 < float(w.std()) < 0.051
    kurt = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
    assert kurt > 3.5  # Student-t(5): heavier tails than a Gaussian (3)


def test_a_real_round_in_fresh_processes(scaling, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "s.json"
    assert scaling.main(["--out", str(out), "--models", "rnn", "--codecs", "zstd"]) == 0
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert row["params"] == 54_538 and row["compress"]["ratio_honest"] > 1.0
    for op in ("compress", "decompress"):
        r = row[op]
        assert r["peak_rss_bytes"] >= r["loaded_rss_bytes"] >= r["base_rss_bytes"] > 0
    assert row["memory_target_bytes"] == 12 * 54_538
    assert "| zstd | rnn | 54,538 |" in rows_table(res)
    assert growth_table(res).count("| zstd |") == 1


def test_readme_renders_the_minilm_section_only_from_committed_results(tmp_path: Path) -> None:
    assert "all-MiniLM" not in readme.render(tmp_path)
    rec = {"model": "minilm", "codec": "int8", "settings": {}, "codec_settings": {},
           "ratio_honest": 3.9, "cos_mean": 0.99998, "nn_same": 1.0, "n_sentences": 1039}
    res = {"environment": {"git_revision": "abc", "device": "cpu", "torch_threads": 1,
                           "torch": "2.13.0", "time_utc": "t"},
           "config": {"params": 22_713_216}, "records": [rec]}
    (tmp_path / "results/minilm").mkdir(parents=True)
    (tmp_path / readme.MINILM[0]).write_text(json.dumps(res))
    text = readme.render(tmp_path)
    assert "### A large real model: all-MiniLM-L6-v2" in text and "| int8 | 3.9x / 3.9x |" in text
    assert "Scaling from 54k" not in text


def test_marginal_memory_cancels_the_fixed_part() -> None:
    marginal_table = scaling_report.marginal_table

    def row(model: str, n: int, peak: int, t: float) -> dict:
        return {"codec": "vae-rd-free", "model": model, "params": n,
                "compress": {"wall_s": t}, "decompress": {"wall_s": t / 10},
                "compress_peak_above_base_bytes": peak}

    res = {"analysis": {"vae-rd-free": {}},
           "rows": [row("a", 10**6, 100 * 2**20 + 40 * 10**6, 5.0),
                    row("b", 3 * 10**6, 100 * 2**20 + 40 * 3 * 10**6, 9.0)]}
    line = marginal_table(res).splitlines()[-1]
    assert line.startswith("| vae-rd-free | a -> b | 40.0 | 28 | missed (1.43x) | 2.00 | 0.200 |")


def test_benchmarks_readme_shows_the_committed_scaling_results() -> None:
    block = scaling_report.block

    path = ROOT / "benchmarks/results/scaling-cpu.json"
    text = (ROOT / "benchmarks/README.md").read_text()
    start, end = "<!-- generated:scaling -->\n", "<!-- /generated:scaling -->"
    if not path.is_file():
        assert start not in text
        return
    assert start in text, "benchmarks/README.md lacks the scaling block"
    shown = text.split(start, 1)[1].split(end, 1)[0]
    assert shown == block(json.loads(path.read_text())), (
        "run: python benchmarks/scaling_report.py "
        "benchmarks/results/scaling-cpu.json and paste it into the block")
    assert "+dirty" not in json.loads(path.read_text())["environment"]["git_revision"]
