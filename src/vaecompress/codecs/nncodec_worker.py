"""The worker that runs inside NNCodec's own interpreter (`codecs/nncodec_peer.py` runs this
file's text with `python -I -c`), so it may use only the standard library, numpy and nncodec.

Request: one JSON object on stdin (`op`: probe, encode or decode; `dir`: a folder for the
arrays). Reply: `<dir>/reply.json`. Never imported by the package.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import sys
import time
import traceback
import types
from typing import Any


class _Meta(type):
    def __getattr__(cls, name: str) -> _Meta:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Meta(name, (cls,), {})


class _Missing(metaclass=_Meta):
    """Stands in for any torchvision/cv2 class or function: constructible, subclassable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> _Meta:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Meta(name, (_Missing,), {})


def _probe(req: dict[str, Any], np: Any) -> dict[str, Any]:
    return {
        "versions": {
            "nncodec": importlib.metadata.version("nncodec"),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        }
    }


def _encode(req: dict[str, Any], np: Any) -> dict[str, Any]:
    from nncodec.nn import encode

    folder = req["dir"]
    arrays = {}
    for i in range(int(req["n"])):
        a = np.load(os.path.join(folder, f"in{i}.npy"), allow_pickle=False)
        arrays[f"t{i}"] = np.ascontiguousarray(a, dtype=np.float32)
    results = os.path.join(folder, "results")
    os.makedirs(results, exist_ok=True)
    args = dict(req["args"], results=results, verbose=False)
    # NNCodec applies its `sparsity` option to a dict of arrays only when epoch > 0 (its
    # federated-learning loop); epoch otherwise only names a results file.
    epoch = 1 if args.get("sparsity", 0) > 0 else 0
    t0 = time.perf_counter()
    bs = encode(arrays, args=args, epoch=epoch)
    elapsed = time.perf_counter() - t0
    with open(os.path.join(folder, "bitstream.nnc"), "wb") as f:
        f.write(bytes(bs))
    return {"elapsed_s": elapsed}


def _decode(req: dict[str, Any], np: Any) -> dict[str, Any]:
    from nncodec.nn import decode

    folder = req["dir"]
    with open(os.path.join(folder, "bitstream.nnc"), "rb") as f:
        bs = bytearray(f.read())
    t0 = time.perf_counter()
    out = decode(bs, args={"verbose": False})
    elapsed = time.perf_counter() - t0
    for i, k in enumerate(out):
        a = np.asarray(out[k])
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        np.save(os.path.join(folder, f"out{i}.npy"), a, allow_pickle=False)
    return {"elapsed_s": elapsed, "names": [str(k) for k in out]}


OPS = {"probe": _probe, "encode": _encode, "decode": _decode}


def main() -> None:
    req = json.loads(sys.stdin.read())
    reply: dict[str, Any] = {"ok": False}
    log = io.StringIO()
    try:
        # NNCodec imports these at module level for its image data sets only; coding a dict of
        # arrays never calls them. Stand-ins keep the real (CUDA-only, huge) packages away.
        for mod in ("torchvision", "cv2"):
            sys.modules[mod] = _StubModule(mod)
        with contextlib.redirect_stdout(log):
            import nncodec.nn  # noqa: F401  (its import errors are reported as the probe's)
            import numpy as np

            op = OPS.get(req["op"])
            if op is None:
                raise ValueError(f"unknown op {req['op']!r}")
            reply.update(op(req, np))
        reply["ok"] = True
    except BaseException as e:  # NNCodec reports bad input with SystemExit
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        reply["error"] = f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
        reply["traceback"] = traceback.format_exc()[-4000:]
    reply["log"] = log.getvalue()[-4000:]
    with open(os.path.join(req["dir"], "reply.json"), "w") as f:
        json.dump(reply, f)


if __name__ == "__main__":
    main()
