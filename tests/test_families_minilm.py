"""`experiments.families_minilm`: MiniLM's fine-tune family, made and refused."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from vaecompress.experiments import families_minilm as fm
from vaecompress.zoo import minilm

needs_minilm = pytest.mark.skipif(minilm.missing() is not None,
                                  reason="optional extra 'minilm' not installed")


def test_a_crop_is_a_contiguous_span_of_the_share_asked() -> None:
    sentence = " ".join(f"w{i}" for i in range(20))
    words = sentence.split()
    seen = set()
    for seed in range(50):
        out = fm._crop(sentence, (0.3, 0.6), random.Random(seed)).split()
        assert 6 <= len(out) <= 12
        start = words.index(out[0])
        assert words[start:start + len(out)] == out  # contiguous, in order
        seen.add(start)
    assert len(seen) > 5  # the spans start in many places
    assert fm._crop("one", (0.3, 0.6), random.Random(0)) == "one"  # at least one word
    a = [fm._crop(sentence, (0.3, 0.6), random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.parametrize("args, message", [
    (["--families", "checkpoints,siblings"], "unknown family 'siblings'"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "10", "--every", "11"], "--every between 1 and --steps"),
    (["--report"], "families.json does not exist"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str, tmp_path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert fm.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@needs_minilm
def test_a_fine_tune_run_keeps_its_checkpoints_and_is_reproducible() -> None:
    from vaecompress.tasks.sentence import SentenceTask

    packaged = minilm.load_state()
    # the integer buffer last: a member's names follow its base's order, whatever that is
    base = {**{k: v for k, v in packaged.items() if v.is_floating_point()},
            **{k: v for k, v in packaged.items() if not v.is_floating_point()}}
    assert list(base) != list(packaged)
    task = SentenceTask("cpu", n_eval=64, n_train=64)
    cfg = replace(fm.MiniLMFamiliesConfig(), steps=2, every=1, batch_size=4)
    run = fm.fine_tune_run(task, base, cfg, 3e-5, 0, progress=False)
    assert [m["label"] for m in run] == ["lr3e-05-step-1", "lr3e-05-step-2"]
    for m in run:
        assert list(m["state"]) == list(base)  # the base's names, in its order
        assert all(m["state"][k].dtype == v.dtype and m["state"][k].shape == v.shape
                   for k, v in base.items())
    name = "encoder.layer.0.attention.self.query.weight"
    first, second = run[0]["state"][name], run[1]["state"][name]
    assert not torch.equal(first, base[name]) and not torch.equal(second, first)
    assert all(torch.equal(run[1]["state"][k], v) for k, v in base.items()
               if not v.is_floating_point())  # the integer buffers stay the base's
    again = fm.fine_tune_run(task, base, cfg, 3e-5, 0, progress=False)
    assert all(torch.equal(again[1]["state"][k], v) for k, v in run[1]["state"].items())
    other = fm.fine_tune_run(task, base, cfg, 3e-5, 1, progress=False)
    assert not torch.equal(other[1]["state"][name], second)


@needs_minilm
def test_bitdeltas_distillation_teaches_the_member_not_the_base() -> None:
    """The task bitdelta's scales are refined on: the member's own embeddings, zero at the
    member, above zero at the base."""
    base = minilm.load_state()
    member = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v)
              for k, v in base.items()}
    ft = fm.member_distiller({"label": "m", "state": member}, torch.device("cpu"), 0,
                             n_train=64)
    batch = next(ft.batches())
    with torch.no_grad():
        assert float(ft.loss(member, batch)) == 0.0
        assert float(ft.loss(base, batch)) > 1e-4
