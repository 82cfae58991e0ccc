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
