"""`bitdelta`: sign bits and one scale per matrix, the other floats kept."""

from __future__ import annotations

import pytest
import torch

from vaecompress.api import compress, decompress
from vaecompress.errors import FormatError, UserError
from vaecompress.format import dumps, loads


def test_each_matrix_is_its_mean_magnitude_times_its_signs() -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(33, 17), "k": torch.randn(4, 2, 3, 3), "b": torch.randn(33),
             "n": torch.tensor(5)}
    res = compress(state, "bitdelta", scale_dtype="float32")
    out = decompress(res.data)
    for name in ("w", "k"):
        x = state[name]
        want = x.abs().double().mean().float() * torch.where(x >= 0, 1.0, -1.0)
        assert torch.allclose(out[name], want, rtol=1e-6, atol=0)
    assert torch.equal(out["b"], state["b"]) and torch.equal(out["n"], state["n"])
    c = loads(res.data)
    assert len(c.payload("signs").data) == (33 * 17 + 4 * 2 * 9 + 7) // 8
    assert len(c.payload("scales").data) == 2 * 4


def test_bad_settings_and_a_damaged_sign_stream_are_refused() -> None:
    with pytest.raises(UserError, match="scale_dtype must be one of"):
        compress({"w": torch.randn(4, 4)}, "bitdelta", scale_dtype="int8")
    c = loads(compress({"w": torch.randn(4, 4)}, "bitdelta").data)
    c.payloads = [p if p.name != "signs" else type(p)(p.name, p.kind, p.role, p.data + b"\0")
                  for p in c.payloads]
    with pytest.raises(FormatError, match="signs hold 3 bytes, 2 expected"):
        decompress(dumps(c))


@pytest.mark.parametrize("bad", [[0], {"a": 1}, None, "int8"])
def test_a_malformed_codec_state_is_a_format_error(bad: object) -> None:
    """Found by the fuzz test: a list in the codec state raised TypeError (unhashable)."""
    from vaecompress.errors import FormatError
    from vaecompress.format import dumps, loads

    res = compress({"w": torch.randn(4, 4), "b": torch.randn(4)}, "bitdelta")
    c = loads(res.data)
    c.codec_state["scale"] = bad
    with pytest.raises(FormatError, match="codec state"):
        decompress(dumps(c))


def _toy_task(teacher_w: torch.Tensor, seed: int = 0):
    """Outputs of a linear map: the rebuilt matrix's loss is its outputs' squared error, on
    inputs whose first two features are 10x the others (so what the outputs need is not the
    weights' least-squares fit)."""
    from vaecompress.training.finetune import Finetuner

    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(64, teacher_w.shape[1], generator=g) for _ in range(8)]
    for x in xs:
        x[:, :2] *= 10

    def loss(state, x):
        return ((x @ state["w"].T - x @ teacher_w.T) ** 2).mean()

    return Finetuner(loss, xs)


def test_refined_scales_lower_the_task_loss_and_keep_the_signs() -> None:
    """BitDelta's refinement: only the scales move, and they move to what the task needs. The
    delta here has a few large entries among many small ones, where the mean magnitude is far
    from the scale that fits the outputs best."""
    from vaecompress.codecs.base import CodecContext

    torch.manual_seed(0)
    w = torch.randn(32, 16) * 0.01
    w[:, :2] *= 50
    state = {"w": w, "b": torch.randn(32)}
    task = _toy_task(w)
    ctx = CodecContext(progress=False, finetune=task)
    plain = compress(state, "bitdelta", ctx=ctx, scale_dtype="float32")
    refined = compress(state, "bitdelta", ctx=ctx, scale_dtype="float32",
                       finetune_epochs=4.0, lr=0.05)
    a, b = loads(plain.data), loads(refined.data)
    assert a.payload("signs").data == b.payload("signs").data
    assert a.payload("floats").data == b.payload("floats").data
    assert a.payload("scales").data != b.payload("scales").data
    assert [len(p.data) for p in a.payloads] == [len(p.data) for p in b.payloads]
    xs = [x for _, x in zip(range(8), task.batches(), strict=False)]
    with torch.no_grad():
        before = sum(float(task.loss(decompress(plain.data), x)) for x in xs)
        after = sum(float(task.loss(decompress(refined.data), x)) for x in xs)
    assert after < 0.8 * before
    assert refined.report["finetune_loss"] and "note" not in refined.report
    # the same refinement twice gives the same bytes
    again = compress(state, "bitdelta", ctx=ctx, scale_dtype="float32",
                     finetune_epochs=4.0, lr=0.05)
    assert again.data == refined.data


def test_refinement_without_a_task_says_so_and_changes_nothing() -> None:
    state = {"w": torch.randn(8, 8)}
    plain = loads(compress(state, "bitdelta").data)
    res = compress(state, "bitdelta", finetune_epochs=1.0)
    assert "not refined" in res.report["note"]
    assert loads(res.data).payload("scales").data == plain.payload("scales").data


def test_the_method_uses_the_task_only_when_it_refines() -> None:
    from vaecompress.codecs import get_codec_class

    cls = get_codec_class("bitdelta")
    assert cls.method({}) == ("bitdelta", False)
    assert cls.method({"finetune_epochs": 1.0}) == ("bitdelta", True)


@pytest.mark.parametrize("key, value", [("finetune_epochs", -1.0), ("lr", 0.0),
                                        ("lr", float("nan")), ("finetune_epochs", True)])
def test_bad_refinement_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(UserError, match=f"bitdelta: {key} must be"):
        compress({"w": torch.randn(4, 4)}, "bitdelta", **{key: value})


def test_a_file_written_before_the_refinement_settings_decodes_the_same() -> None:
    """Files of before name no finetune_epochs or lr in their settings; version 1 reads them."""
    state = {"w": torch.randn(8, 8), "b": torch.randn(8)}
    res = compress(state, "bitdelta")
    c = loads(res.data)
    for key in ("finetune_epochs", "lr"):
        c.codec["settings"].pop(key)
    old = decompress(dumps(c))
    new = decompress(res.data)
    assert all(torch.equal(old[k], new[k]) for k in new)
