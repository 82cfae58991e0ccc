"""MiniLM: the packaged model, its sentence task, the bench task on it and its report.

Tests that need the optional extra `minilm` (scripts/setup.sh minilm) skip without it; the
sentence files, the fidelity arithmetic, the grids and their budgets, the record key and the
report are checked everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaecompress.codecs import REGISTRY, make_codec
from vaecompress.experiments import bench_minilm as minilm_bench
from vaecompress.experiments.bench import BenchConfig, bench, record_key
from vaecompress.experiments.minilm_report import best_at, summary_table, write_report
from vaecompress.tasks.sentence import (
    TRAIN_BATCH,
    VALIDATION,
    mean_pool,
    nearest_neighbours,
    read_sentences,
)
from vaecompress.zoo import minilm

ROOT = Path(__file__).resolve().parents[1]
needs_minilm = pytest.mark.skipif(minilm.missing() is not None,
                                  reason="optional extra 'minilm' not installed")


# ------------------------------------------------------------------ everywhere


def test_sentence_sets_are_large_distinct_and_disjoint() -> None:
    ev, tr = read_sentences("eval"), read_sentences("train")
    assert len(ev) >= 1000 and len(set(ev)) == len(ev)
    assert len(tr) == 2048 and len(set(tr)) == len(tr)
    assert not set(ev) & set(tr)
    assert all(s[0].isupper() and s.endswith(".") and 6 <= len(s.split()) <= 40 for s in ev + tr)


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7),
                    reason="the sentence files were made from CPython 3.11.7's own text")
def test_sentence_files_are_what_the_script_makes() -> None:
    # heldout.txt needs a download: tests/test_sentences.py checks it when given the package
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/make_sentences.py"), "--check",
                           "--sets", "eval", "train"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mean_pool_ignores_padding_and_normalizes() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[1.0, 0.0]]))


def test_nearest_neighbours_exclude_self_across_blocks() -> None:
    emb = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]]), dim=1)
    assert nearest_neighbours(emb, block=2).tolist() == [1, 0, 3, 2, 2]


def test_missing_extra_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.PACKAGE else real(name, *a))
    assert minilm.missing() == minilm.INSTALL_HINT
    with pytest.raises(Exception, match=r"scripts/setup\.sh minilm"):
        minilm.model_dir()


@pytest.mark.parametrize("preset", sorted(minilm_bench.PRESETS))
def test_grid_points_are_valid_settings_of_registered_codecs(preset: str) -> None:
    grid = minilm_bench.PRESETS[preset]
    assert set(grid) <= set(REGISTRY)
    for codec, points in grid.items():
        assert points, codec
        for p in points:
            REGISTRY[codec].Settings(**p)  # every key is a setting of the codec
            if REGISTRY[codec].available() is None:
                make_codec(codec, **p)  # and its value passes the codec's checks
    assert minilm_bench.MiniLMBench(preset).default_codecs() == tuple(grid)


def test_every_method_that_distils_spends_the_same_budget() -> None:
    """prune, Deep Compression and vae-rd distil DISTILL_STEPS steps of the sentence
    finetuner (2,048 training sentences in batches of 32)."""
    spe = minilm_bench.STEPS_PER_EPOCH
    assert spe == (len(read_sentences("train")) - VALIDATION) // TRAIN_BATCH
    budget = minilm_bench.DISTILL_STEPS
    grid = minilm_bench.GRID
    assert [p["finetune_epochs"] * spe for p in grid["prune"]] == [budget]
    assert [(p["prune_epochs"] + p["quant_epochs"]) * spe
            for p in grid["deep-compression"]] == [budget]
    assert grid["vae-rd"] == [{**p, "epochs": budget / spe} for p in minilm_bench.VAE_RD_POINTS]
    data = {c for c, pts in grid.items() for p in pts
            if c != "vae-rd" and REGISTRY[c].method(make_codec(c, **p).settings_json())[1]}
    assert data == {"prune", "deep-compression"}  # no other method distils


def test_minilm_grid_sweeps_nncodec_at_every_qp_and_quantizes_per_channel_and_group() -> None:
    grid = minilm_bench.GRID
    assert [p["qp"] for p in grid["nncodec"]] == list(range(-40, -19))
    for codec in ("int8", "int4"):
        assert grid[codec] == [{"granularity": "channel", "entropy": True}]
    per_group = [(p["bits"], p["group_size"]) for p in grid["hqq"] if p.get("optimize") is False]
    assert {b for b, _ in per_group} == {4, 8}
    assert REGISTRY["hqq"].method({"optimize": False})[0] != REGISTRY["hqq"].method({})[0]
    for codec in ("vae-rd-free", "zstd", "zipnn", "kmeans"):
        assert grid[codec] == minilm_bench.DATAFREE[codec]
    assert all(p in grid["hqq"] for p in minilm_bench.DATAFREE["hqq"])


def test_minilm_record_key_is_unchanged() -> None:
    """Keys the MiniLM bench gave its records before it ran on the shared runner: records
    copied from results/minilm and results/minilm-datafree are found by them."""
    cpu = torch.device("cpu")
    int8 = make_codec("int8").settings_json()
    channel = make_codec("int8", granularity="channel", entropy=True).settings_json()
    assert minilm_bench.MODEL_KEY == "minilm-22713216"
    assert record_key(minilm_bench.MODEL_KEY, "int8", int8, 0, cpu) == "fb3731c954ee"
    assert record_key(minilm_bench.MODEL_KEY, "int8", channel, 0, cpu) == "7fd492cdb555"


def test_a_stored_record_is_reused_without_the_model_run(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record copied into the run's records/ under its key is reused: no sentence task is
    built, nothing is compressed. One lacking the held-out fields would be measured again."""
    import vaecompress.experiments.bench as bench_mod

    monkeypatch.setattr(minilm, "missing", lambda: None)
    monkeypatch.setattr(minilm, "load_state", lambda: {"w": torch.zeros(2, 2)})
    monkeypatch.setattr(bench_mod, "measure", lambda *a, **kw: pytest.fail("not reused"))
    task = minilm_bench.MiniLMBench("datafree")
    point = {"granularity": "channel", "entropy": True}
    rec = {**_record("int8", 7.0, 0.9999, 0.99, **point),
           **{f: 0.5 for f in task.fidelity_fields}}
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "7fd492cdb555.json").write_text(json.dumps(rec))
    monkeypatch.setitem(minilm_bench.DATAFREE, "int8", [point])
    res = bench(BenchConfig("minilm-datafree", ("minilm",), ("int8",)), task, tmp_path,
                device=torch.device("cpu"), progress=False)
    assert res["records"] == [rec] and task._sentences is None
    assert res["config"]["params"] == minilm.PARAMS and res["config"]["task"] == "minilm"


def _record(codec: str, ratio: float, cos: float, nn: float, **settings: object) -> dict:
    return {"model": "minilm", "codec": codec, "settings": settings, "codec_settings": settings,
            "ratio_honest": ratio, "ratio_paper": ratio, "cos_mean": cos, "cos_min": cos - 0.01,
            "nn_same": nn, "n_sentences": 1039, "file_bytes": int(9e7 / ratio),
            "external_bytes": 0, "bits_per_param": 32 / ratio, "compress_s": 10.0,
            "decompress_s": 1.0, "compress_s_per_mparam": 0.44, "decompress_s_per_mparam": 0.04,
            "rss_before_bytes": 2**30, "peak_rss_bytes": 2**31,
            "peak_added_bytes_per_param": 47.3, "git_revision": "abc"}


def _results(records: list[dict]) -> dict:
    env = {"seed": 0, "device": "cpu", "torch_threads": 1, "torch": torch.__version__,
           "time_utc": "2026-01-01T00:00:00+00:00", "git_revision": "abc"}
    return {"environment": env, "config": {"params": minilm.PARAMS}, "skipped": {},
            "records": records}


def test_report_picks_the_best_ratio_at_each_fidelity_level(tmp_path: Path) -> None:
    recs = [_record("int8", 3.9, 0.99995, 1.0), _record("int4", 7.6, 0.995, 0.9),
            _record("kmeans", 6.0, 0.9995, 0.97, bits=6),
            _record("kmeans", 8.0, 0.98, 0.8, bits=4)]
    assert best_at(recs, 0.999)["kmeans"]["settings"] == {"bits": 6}
    assert best_at(recs, 0.99)["int4"]["ratio_honest"] == 7.6
    assert best_at(recs, 0.999)["int4"] is None
    recs[1]["compress_s"], recs[1]["peak_added_bytes_per_param"] = 3.3, None
    table = summary_table(_results(recs))
    assert "compress_s there (0.999 / 0.99)" in table
    assert "| int4 | - / 7.6x | - / 90.0% | - / 3.3 | - / - |" in table
    assert "| kmeans | 6x / 6x | 97.0% / 97.0% | 10.0 / 10.0 | 47.3 / 47.3 |" in table
    summary = write_report(_results(recs), tmp_path)
    assert summary == table
    md = (tmp_path / "bench.md").read_text()
    assert md.count("| kmeans | bits=") == 2 and "0.99950" in md
    assert (tmp_path / "rate_fidelity.png").read_bytes()[:4] == b"\x89PNG"


def test_report_has_a_table_per_sentence_set_with_the_cost_of_each_pick(tmp_path: Path) -> None:
    def held(rec: dict, cos: float, nn: float) -> dict:
        return {**rec, "heldout_cos_mean": cos, "heldout_cos_min": cos - 0.01,
                "heldout_nn_same": nn, "heldout_n_sentences": 1000}

    fast = {**_record("nncodec", 5.0, 0.9995, 0.98, qp=-38), "compress_s": 40.0}
    small = {**_record("nncodec", 6.0, 0.9991, 0.96, qp=-35), "compress_s": 30.0,
             "peak_added_bytes_per_param": 12.5}
    pruned = _record("prune", 3.0, 0.995, 0.9, sparsity=0.5, finetune_epochs=2.0)
    recs = [held(fast, 0.9995, 0.98), held(small, 0.998, 0.95), held(pruned, 0.992, 0.9)]
    summary = write_report(_results(recs), tmp_path)
    fidelity_set, heldout_set = summary.split("On the held-out set")
    # near-lossless (>= 97% kept) picks qp -38; 0.999 the smaller qp -35, on the fidelity set
    assert "| nncodec | 5x | 6x / 6x | 96.0% / 96.0% | 40.0 / 30.0 / 30.0 | 47.3 / 12.5 / 12.5 |" \
        in fidelity_set
    # on the held-out set qp -35 drops below 0.999: qp -38 is the pick there
    assert "| nncodec | 5x | 5x / 6x | 98.0% / 95.0% | 40.0 / 40.0 / 30.0 |" in heldout_set
    assert "| prune (data) | - | - / 3x |" in heldout_set
    md = (tmp_path / "bench.md").read_text()
    assert summary in md and "held-out cos_mean" in md


# ------------------------------------------------------------------ with the extra


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    if minilm.missing() is not None:
        pytest.skip("optional extra 'minilm' not installed")
    from vaecompress.tasks.sentence import SentenceTask

    return SentenceTask(n_eval=48, n_train=64)


@needs_minilm
def test_packaged_weights_as_stored() -> None:
    state = minilm.load_state()
    assert len(state) == 104
    floats = [v for v in state.values() if v.is_floating_point()]
    assert sum(v.numel() for v in floats) == minilm.PARAMS
    assert {v.dtype for v in floats} == {torch.float32}
    pos = state["embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.reshape(-1).tolist() == list(range(512))


@needs_minilm
def test_embeddings_are_sentence_transformers_own(task) -> None:  # type: ignore[no-untyped-def]
    st = minilm.network()
    sentences = task.eval_sentences[:8]
    want = torch.as_tensor(st.encode(sentences, convert_to_numpy=True))
    assert torch.allclose(task.eval_ref[:8], want, atol=1e-5)


@needs_minilm
def test_fidelity_is_one_for_the_original_and_drops_with_noise(task) -> None:  # type: ignore[no-untyped-def]
    same = task.fidelity(task.reference)
    assert same["cos_mean"] > 0.99999 and same["nn_same"] == 1.0 and same["n_sentences"] == 48
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=gen)
             if v.is_floating_point() else v for k, v in task.reference.items()}
    worse = task.fidelity(noisy)
    assert worse["cos_mean"] < 0.99 and worse["cos_min"] <= worse["cos_mean"]


@needs_minilm
def test_distillation_loss_is_zero_at_the_original_and_has_gradients(task) -> None:  # type: ignore[no-untyped-def]
    ft = task.finetuner(seed=0, batch_size=16)
    # a quarter of the 64 training sentences kept apart for early stopping, 48 in 3 batches
    assert ft.steps_per_epoch == 3 and ft.validation is not None
    assert sum(len(b.index) for b in ft.validation) == 16
    held = {int(i) for b in ft.validation for i in b.index}
    seen = {int(i) for _, b in zip(range(12), ft.batches(), strict=False) for i in b.index}
    assert len(seen) == 48 and not held & seen
    batch = next(ft.batches())
    assert abs(float(ft.loss(task.reference, batch))) < 1e-5
    w = task.reference["encoder.layer.0.output.dense.weight"]
    leaf = (w + 0.05 * torch.randn_like(w)).requires_grad_(True)
    loss = ft.loss({**task.reference, "encoder.layer.0.output.dense.weight": leaf}, batch)
    loss.backward()
    assert float(loss.detach()) > 0 and leaf.grad is not None and float(leaf.grad.abs().sum()) > 0


@needs_minilm
def test_a_training_step_checkpoints_each_layer_with_the_same_values_and_gradients(
        task) -> None:  # type: ignore[no-untyped-def]
    """The student's forward with gradients runs each encoder layer under activation
    checkpointing (issue 19): the same embeddings and the same gradients, bit for bit, as the
    whole model through `functional_call`, and far less kept for the backward pass."""
    from torch.func import functional_call

    from vaecompress.tasks.sentence import mean_pool

    gen = torch.Generator().manual_seed(1)
    leaves = {k: (v + 0.02 * v.std() * torch.randn(v.shape, generator=gen)).requires_grad_(True)
              if v.is_floating_point() else v for k, v in task.reference.items()}
    batch = next(task.finetuner(seed=0, batch_size=16).batches())

    def saved_bytes(fn):  # type: ignore[no-untyped-def]
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return out, total[0]

    def plain() -> torch.Tensor:
        out = functional_call(task.bert, leaves, args=(), kwargs=batch.inputs)
        return mean_pool(out.last_hidden_state, batch.inputs["attention_mask"])

    ref, kept_plain = saved_bytes(plain)
    grads_ref = torch.autograd.grad(ref.square().sum(), [leaves[k] for k in leaves
                                                         if leaves[k].requires_grad],
                                    allow_unused=True)
    got, kept = saved_bytes(lambda: task.forward(leaves, batch))
    assert torch.equal(got, ref)
    grads = torch.autograd.grad(got.square().sum(), [leaves[k] for k in leaves
                                                     if leaves[k].requires_grad],
                                allow_unused=True)
    for a, b in zip(grads, grads_ref, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert kept < kept_plain / 3


@needs_minilm
def test_bench_measures_both_sentence_sets_and_reuses(tmp_path: Path,
                                                     task) -> None:  # type: ignore[no-untyped-def]
    bench_task = minilm_bench.MiniLMBench("minilm", sentences=task)
    cfg = BenchConfig("minilm", ("minilm",), ("int8",))
    res = bench(cfg, bench_task, tmp_path, device=torch.device("cpu"), progress=False)
    (rec,) = res["records"]
    assert rec["cos_mean"] > 0.999 and rec["heldout_cos_mean"] > 0.999
    assert rec["n_sentences"] == rec["heldout_n_sentences"] == 48
    assert 3.5 < rec["ratio_honest"] < 4.5
    assert rec["peak_rss_bytes"] >= rec["rss_before_bytes"] > 0
    assert rec["compress_s_per_mparam"] == pytest.approx(rec["compress_s"] / 22.713216)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["records"] == [rec] and saved["config"]["grid"] == {"int8": minilm_bench.GRID[
        "int8"]} and saved["config"]["distill_steps"] == minilm_bench.DISTILL_STEPS
    key = record_key(minilm_bench.MODEL_KEY, "int8", rec["codec_settings"], 0,
                     torch.device("cpu"))
    assert (tmp_path / "records" / f"{key}.json").is_file()


@needs_minilm
def test_integer_buffer_survives_a_lossy_codec() -> None:
    from vaecompress.api import compress, decompress

    state = minilm.load_state()
    res = compress(state, "int8")
    out = decompress(res.data, res.externals)
    assert list(out) == list(state)
    assert out["embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(out["embeddings.position_ids"], state["embeddings.position_ids"])


# The codecs whose first MiniLM point of the bench loses the embeddings (`results/minilm`).
DESTROYS_MINILM = {"int4", "vae-paper"}


@pytest.mark.slow
@needs_minilm
@pytest.mark.parametrize("codec", sorted(minilm_bench.GRID))
def test_every_codec_rebuilds_minilm(codec: str, task) -> None:  # type: ignore[no-untyped-def]
    """Each codec at its first MiniLM point (minutes each: run by the benchmarks, not CI). Two of
    them destroy MiniLM there, as `results/minilm` records (int4 per channel: mean cosine 0.25;
    the paper's VAE at a budget of minutes: 0.005): for those the file must still rebuild every
    tensor, and the test says so if they start keeping the embeddings."""
    from vaecompress.api import compress, decompress
    from vaecompress.codecs import CodecContext, get_codec_class

    if (hint := get_codec_class(codec).available()) is not None:
        pytest.skip(hint)
    ctx = CodecContext(progress=False, finetune=task.finetuner())
    res = compress(task.reference, codec, ctx=ctx, **minilm_bench.GRID[codec][0])
    out = decompress(res.data, res.externals)
    assert torch.equal(out["embeddings.position_ids"], task.reference["embeddings.position_ids"])
    assert [(k, v.shape, v.dtype) for k, v in out.items()] == \
        [(k, v.shape, v.dtype) for k, v in task.reference.items()]
    assert all(bool(torch.isfinite(v).all()) for v in out.values() if v.is_floating_point())
    cos = task.fidelity(out)["cos_mean"]
    if codec in DESTROYS_MINILM:
        assert cos < 0.5, f"{codec} now keeps MiniLM ({cos:.4f}): update results/minilm's story"
    else:
        assert cos > 0.5


@needs_minilm
def test_distill_coverage_losses(task) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/distill_coverage.py: every variant's loss is zero at the original weights,
    the wider ones add a positive term off them on the same batch, validation is scored by the
    bench's own loss, and the random-token sequences are seeded and hold no special token
    but their [CLS] and [SEP]."""
    from conftest import load_script

    dc = load_script("benchmarks/distill_coverage.py", "distill_coverage")
    ref = task.reference
    gen = torch.Generator().manual_seed(0)
    off = {k: v + 0.01 * v.std() * torch.randn(v.shape, generator=gen)
           if v.is_floating_point() else v for k, v in ref.items()}
    fts = {v: dc.finetuner(task, v) for v in dc.VARIANTS}
    pooled = fts["pooled"]
    real = next(pooled.batches())
    losses = {}
    for variant, ft in fts.items():
        batch = next(ft.batches())
        assert float(ft.loss(ref, batch)) < 1e-6
        losses[variant] = float(ft.loss(off, batch))
        assert float(ft.loss(off, ft.validation[0])) == float(pooled.loss(off, ft.validation[0]))
        if variant != "pooled":
            real_b, ids = batch
            assert torch.equal(real_b.inputs["input_ids"], real.inputs["input_ids"])
            if variant == "synthetic":
                assert ids.shape == (dc.SYNTHETIC, dc.SYNTHETIC_LEN + 2)
                inner = set(ids[:, 1:-1].reshape(-1).tolist())
                assert not inner & set(task.tokenizer.all_special_ids)
                assert torch.equal(ids, next(dc.finetuner(task, variant).batches())[1])
    assert losses["tokens"] > losses["pooled"] > 0
    assert losses["synthetic"] > losses["pooled"]
    cov = dc.coverage(task)
    for name in ("eval", "heldout"):
        assert 0 < cov[name]["distinct_seen"] <= cov[name]["tokens_seen"] <= 1


@needs_minilm
def test_the_benchmarks_arrays_rebuild_the_model(task) -> None:  # type: ignore[no-untyped-def]
    """`benchmarks/minilm_arrays.py`: the coded tensors as arrays, rebuilt as they are, are the
    model (fidelity 1 on both texts); one tensor changed moves only that tensor."""
    from conftest import load_script

    ma = load_script("benchmarks/minilm_arrays.py")
    ca = ma.coded_arrays(task)
    assert ca.params == 22_713_216 and "embeddings.position_ids" not in ca.names
    same = ca.rebuilt(list(ca.arrays))
    assert all(torch.equal(same[k], v) for k, v in task.reference.items())
    fid = ma.fidelity(task, same)
    assert fid["cos_mean"] > 0.99999 and fid["heldout_cos_mean"] > 0.99999
    assert fid["nn_same"] == fid["heldout_nn_same"] == 1.0
    e = ca.names.index("embeddings.word_embeddings.weight")
    arrays = list(ca.arrays)
    arrays[e] = arrays[e] * 0
    moved = ca.rebuilt(arrays)
    assert [k for k in task.reference if not torch.equal(moved[k], task.reference[k])] == \
        ["embeddings.word_embeddings.weight"]
