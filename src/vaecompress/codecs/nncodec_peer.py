"""`nncodec`: NNCodec, the reference software of ISO/IEC 15938-17 (NNC), as an optional peer codec.

NNCodec quantizes every floating tensor uniformly (step 2**(qp/4), with dependent "trellis"
quantization by default) and codes the levels with DeepCABAC, a context-adaptive binary
arithmetic coder. Tensors of two or more dimensions are "weights" (step from `qp`), the others
(biases, norm scales, scalars) are coded finer (`nonweight_qp`). The whole NNC bitstream is the
one `code` payload; non-float tensors pass through as in every codec.

Two ways to sparser weights, neither changing the layout: NNCodec's own data-free `sparsity`
option (run inside its encoder), and `prune`, ours: global magnitude pruning with masked
fine-tuning on the task (`coding.sparse`, `training.finetune`) before NNCodec codes the result,
the strongest combination a user could assemble from parts. Times are measured inside the worker
as well (`Encoded.report["encode_s_inside_worker"]`, `last_decode_s` after `decode`), since the
worker's start-up (~3 s, importing torch) dwarfs NNCodec's own work on small models.

Boundary: NNCodec is not a dependency of vaecompress. It needs numpy<2 and drags torchvision in,
so it lives in its own virtual environment (scripts/install_nncodec.sh, docs/nncodec.md) and runs
in a subprocess of that interpreter: `VAECOMPRESS_NNCODEC_PYTHON`, or by default
~/.cache/vaecompress/nncodec-venv/bin/python. Only JSON, .npy arrays (read with
allow_pickle=False) and the raw bitstream cross the boundary, through a private temp folder. The
worker stubs torchvision and cv2 (imported by NNCodec at module level for image data sets only).
Tensors go to NNCodec under short synthetic names (t0, t1, ...) in manifest order: NNC stores
names in the bitstream, and NNCodec gives names ending in _G/_H a meaning of its own.

`python -c "from vaecompress.codecs.nncodec_peer import main; main()"` checks an installation
(probe and a tiny round trip); scripts/install_nncodec.sh runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    Knob,
    add_passthrough,
    join_passthrough,
    register,
    split_passthrough,
)
from vaecompress.coding.floats import is_weight
from vaecompress.coding.sparse import magnitude_masks
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.params.vector import is_float_dtype
from vaecompress.training.finetune import masked_finetune

ENV_PYTHON = "VAECOMPRESS_NNCODEC_PYTHON"
DEFAULT_VENV = Path("~/.cache/vaecompress/nncodec-venv")
NOT_INSTALLED = ("NNCodec is not installed: run scripts/install_nncodec.sh "
                 "(or set VAECOMPRESS_NNCODEC_PYTHON)")
PAYLOAD = "bitstream"
KIND = "nnc-bitstream"
APPROX_METHODS = ("uniform", "codebook")
PROBE_TIMEOUT_S = 300.0
CODE_TIMEOUT_S = 6 * 3600.0  # NNCodec codes a few MB/s; this only stops a hung worker

# Runs inside NNCodec's interpreter: the text of `nncodec_worker.py`, given to `python -I -c`.
WORKER_SOURCE = (Path(__file__).parent / "nncodec_worker.py").read_text(encoding="utf-8")


def nncodec_python() -> Path:
    """The interpreter that runs NNCodec: $VAECOMPRESS_NNCODEC_PYTHON or the default venv's."""
    env = os.environ.get(ENV_PYTHON, "").strip()
    if env:
        return Path(env).expanduser()
    venv = DEFAULT_VENV.expanduser()
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


class _WorkerError(Exception):
    """The worker ran but NNCodec failed; the message is one line."""


def _run_worker(python: Path, op: str, folder: Path, timeout: float,
                **fields: Any) -> dict[str, Any]:
    """Run one request in NNCodec's interpreter; raises `_WorkerError` when it fails there and
    `OSError` / `subprocess.TimeoutExpired` when it cannot run at all."""
    request = json.dumps({"op": op, "dir": str(folder), **fields})
    # -I: ignore PYTHONPATH & co and the user site, so nothing of this environment leaks in.
    proc = subprocess.run([str(python), "-I", "-c", WORKER_SOURCE], input=request, text=True,
                          errors="replace", capture_output=True, timeout=timeout, check=False)
    reply_path = folder / "reply.json"
    try:
        reply = json.loads(reply_path.read_text())
        reply_path.unlink()
    except (OSError, ValueError):
        tail = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        raise _WorkerError(f"NNCodec worker exited with status {proc.returncode}"
                           + (f": {tail[-1][:300]}" if tail else "")) from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise _WorkerError(str(error or "unknown error"))
    return reply


_PROBES: dict[str, str | None] = {}  # interpreter path -> None (works) or why it does not


def _probe(python: Path) -> str | None:
    """None when `python` can run NNCodec, else a one-line reason; cached per interpreter."""
    key = str(python)
    if key not in _PROBES:
        if not python.is_file():
            _PROBES[key] = f"no interpreter at {python}"
        else:
            with tempfile.TemporaryDirectory(prefix="vaecompress-nnc-") as tmp:
                try:
                    _run_worker(python, "probe", Path(tmp), PROBE_TIMEOUT_S)
                    _PROBES[key] = None
                except (_WorkerError, OSError, subprocess.SubprocessError) as e:
                    lines = str(e).splitlines()
                    _PROBES[key] = f"{python}: {lines[0] if lines else type(e).__name__}"
    return _PROBES[key]


def nncodec_available() -> bool:
    """Whether the `nncodec` codec can run here (`NNCodecCodec.available()` says why not)."""
    return _probe(nncodec_python()) is None


def require_nncodec() -> Path:
    """The NNCodec interpreter, or a one-line `UserError` saying how to install it."""
    python = nncodec_python()
    why = _probe(python)
    if why is None:
        return python
    if not python.exists():
        raise UserError(NOT_INSTALLED)
    raise UserError(f"{NOT_INSTALLED} [{why}]")


@dataclass(frozen=True)
class NNCodecSettings:
    qp: int = -32  # weights (tensors of 2+ dims): step 2**(qp / 2**qp_density); lower is finer
    use_dq: bool = True  # dependent (trellis-coded) quantization
    nonweight_qp: int | None = -75  # 1-D tensors and scalars; None: qp - 2**(qp_density+1)
    qp_density: int = 2  # 2**qp_density qp steps per doubling of the step size
    opt_qp: bool = False  # NNCodec adjusts qp per tensor (by size and spread)
    param_opt: bool = True  # NNCodec searches DeepCABAC's coding parameters per tensor
    row_skipping: bool = True  # signal all-zero rows of weight matrices with one flag
    approx_method: str = "uniform"  # or "codebook" (quantization levels coded via a codebook)
    bitdepth: int | None = None  # integer-aligned quantization to this many bits (ignores qp)
    # NNCodec's own data-free sparsification before quantization: zero the weights below a
    # per-tensor threshold (mean +- delta * std, delta raised until this fraction of all coded
    # values is zero); 0: off.
    sparsity: float = 0.0
    # NNCodec's structured sparsification, applied with `sparsity`: zero the rows whose mean
    # |w| is below this factor times the tensor's mean row magnitude. NNCodec's default, 0.9, is
    # meant for federated weight updates and wipes ~half the rows of a trained model; 0: off.
    struct_spars_factor: float = 0.0
    # Ours, before NNCodec: global magnitude pruning of this fraction of the weights of all
    # matrices/kernels, then masked fine-tuning (when the context has a finetuner); 0: off.
    prune: float = 0.0
    prune_epochs: float = 2.0  # epochs of masked fine-tuning after `prune`
    prune_lr: float = 1e-3  # Adam learning rate of that fine-tuning


def _check_int(name: str, value: Any, lo: int, hi: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"nncodec setting {name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_fraction(name: str, value: Any, *, below_one: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (
        0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0)
    if not ok:
        raise UserError(f"nncodec setting {name} must be a number in [0, "
                        f"{'1)' if below_one else '1]'}, got {value!r}")


def _coded_specs(c: Container) -> list[dict[str, Any]]:
    """Manifest entries that went through NNCodec: floating tensors with at least one element."""
    try:
        return [t for t in c.tensors if is_float_dtype(t["dtype"]) and _numel(t["shape"]) > 0]
    except (UserError, KeyError, TypeError, ValueError) as e:
        raise FormatError(f"manifest has a bad entry: {e}") from None


def _numel(shape: list[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


@register
class NNCodecCodec(Codec):
    name = "nncodec"
    version = 1  # pruning and NNCodec's sparsification change the weights, not the layout
    Settings = NNCodecSettings
    uses_task = True  # with `prune`, the pruned model is fine-tuned when ctx.finetune is given

    def __init__(self, settings: Any = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        # NNCodec's own time of the last `decode` in this instance, measured inside the worker
        # (the `decode` call only: no process start, no imports, no file transfer); None before.
        # `decode` can return only the state_dict, so a bench reads it here.
        self.last_decode_s: float | None = None
        self.last_decode_worker_s: float | None = None  # the whole worker process, for contrast

    @classmethod
    def available(cls) -> str | None:
        python = nncodec_python()
        why = _probe(python)
        if why is None:
            return None
        return NOT_INSTALLED if not python.exists() else f"{NOT_INSTALLED} [{why}]"

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        # Pruning and fine-tuning on the task before NNCodec is the combination a user could
        # assemble from parts; NNCodec alone (with or without its sparsity) needs no data.
        if float(settings.get("prune", 0) or 0) > 0:
            return "nncodec+prune", True
        return cls.name, False

    @classmethod
    def fidelity_knob(cls, settings: Mapping[str, Any], *, delta: bool = False) -> Knob | None:
        # qp, every step (a step is 2**(1/4) of the quantization step at qp_density 2); none
        # where a fixed bit depth sets the step
        if settings.get("bitdepth") is not None:
            return None
        return Knob("qp", -60, -2, finer=-1, step=6, resolution=1, integer=True)

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "full":
            # Every qp step where the zoo's models go from no loss to past the one-point line
            # (as the datafree preset), and past it; pruned and fine-tuned first (the data
            # variant, a retraining each), every third step and the last ones.
            plain = [{"qp": q} for q in (-38, -32, *range(-26, -9), -6, -2)]
            spars = [{"qp": q, "sparsity": sp} for sp in (0.7, 0.9) for q in (-26, -20, -14)]
            pruned = [{"qp": q, "prune": p} for p in (0.9, 0.95)
                      for q in (-26, -23, -20, -17, -14, -12, -10)]
            return plain + spars + pruned
        if preset == "datafree":  # every qp step, from no loss on the zoo to past 1 point
            return [{"qp": q} for q in range(-26, -9)]
        return [{"qp": -32}]

    def validate(self) -> None:
        s = self.settings
        _check_int("qp_density", s.qp_density, 0, 6)
        qp_max = 2 ** (5 + s.qp_density)  # NNC's qp range at this density
        _check_int("qp", s.qp, -qp_max, qp_max - 1)
        _check_int("nonweight_qp", s.nonweight_qp, -qp_max, qp_max - 1, optional=True)
        _check_int("bitdepth", s.bitdepth, 2, 16, optional=True)
        if s.approx_method not in APPROX_METHODS:
            raise UserError(f"nncodec setting approx_method must be one of {APPROX_METHODS}, "
                            f"got {s.approx_method!r}")
        _check_fraction("sparsity", s.sparsity, below_one=True)
        _check_fraction("struct_spars_factor", s.struct_spars_factor)
        _check_fraction("prune", s.prune)
        if s.prune_epochs < 0:
            raise UserError(f"nncodec setting prune_epochs must be >= 0, got {s.prune_epochs!r}")
        if not s.prune_lr > 0:
            raise UserError(f"nncodec setting prune_lr must be > 0, got {s.prune_lr!r}")

    @property
    def python(self) -> Path:
        return require_nncodec()

    def nnc_args(self) -> dict[str, Any]:
        s = self.settings
        return {"qp": s.qp, "use_dq": bool(s.use_dq), "nonweight_qp": s.nonweight_qp,
                "qp_density": s.qp_density, "opt_qp": bool(s.opt_qp),
                "param_opt": bool(s.param_opt), "row_skipping": bool(s.row_skipping),
                "approx_method": s.approx_method, "bitdepth": s.bitdepth,
                "sparsity": float(s.sparsity), "struct_spars_factor": float(s.struct_spars_factor)}

    def _prune(self, state: StateDict, ctx: CodecContext) -> tuple[StateDict, dict[str, Any]]:
        """Global magnitude pruning of the matrices/kernels, then masked fine-tuning when the
        context has a finetuner (pruned weights stay exactly zero); `state` unchanged at 0."""
        s = self.settings
        if s.prune <= 0:
            return state, {}
        coded, _ = split_passthrough(state)
        weights = {k: v for k, v in coded.items() if is_weight(list(v.shape))}
        masks = magnitude_masks(weights, s.prune, scope="global")
        # masked_finetune returns its input untouched without a finetuner: mask here first.
        pruned = {k: (v * masks[k].to(v.dtype) if k in masks else v) for k, v in state.items()}
        report: dict[str, Any] = {}
        if s.prune_epochs > 0 and ctx.finetune is None:
            report["note"] = "no finetuner in the context: pruned without fine-tuning"
        pruned, losses = masked_finetune(pruned, masks, ctx, s.prune_epochs, s.prune_lr,
                                         desc="nncodec prune")
        n = sum(m.numel() for m in masks.values())
        report["pruned_fraction"] = (n - sum(int(m.sum()) for m in masks.values())) / max(n, 1)
        report["finetune_loss"] = losses
        return pruned, report

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        state_in = state
        state, prune_report = self._prune(state, ctx)
        coded, raw = split_passthrough(state)
        tensors = [t for t in coded.values() if t.numel() > 0]  # empty ones: manifest suffices
        if not tensors:
            raise UserError("the state_dict has no floating-point tensors to compress")
        with tempfile.TemporaryDirectory(prefix="vaecompress-nnc-") as tmp:
            folder = Path(tmp)
            for i, t in enumerate(tensors):
                a = t.detach().to("cpu", torch.float32).numpy()
                # NNCodec cannot code a 0-d array; the manifest restores the shape.
                np.save(folder / f"in{i}.npy", a.reshape(-1) if a.ndim == 0 else a,
                        allow_pickle=False)
            python = self.python  # probe (cached) before the clock starts
            t0 = time.perf_counter()
            try:
                reply = _run_worker(python, "encode", folder, CODE_TIMEOUT_S, n=len(tensors),
                                    args=self.nnc_args())
            except _WorkerError as e:
                raise UserError(f"NNCodec could not encode: {e}") from None
            except subprocess.TimeoutExpired:
                raise UserError(f"NNCodec did not finish encoding in {CODE_TIMEOUT_S:.0f} s") \
                    from None
            worker_s = time.perf_counter() - t0
            bitstream = (folder / "bitstream.nnc").read_bytes()
        c = self.new_container(state_in)
        c.payloads.append(Payload(PAYLOAD, KIND, ROLE_CODE, bitstream))
        add_passthrough(c, raw)
        n = sum(t.numel() for t in tensors)
        report = {"nnc_bytes": len(bitstream), "coded_tensors": len(tensors),
                  "bits_per_param": 8 * len(bitstream) / n,
                  "encode_s_inside_worker": _seconds(reply),
                  "encode_s_worker_process": worker_s, **prune_report}
        return Encoded(c, report=report)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        self.last_decode_s = self.last_decode_worker_s = None
        specs = _coded_specs(c)
        out: StateDict = {}
        for spec in c.tensors:  # floating tensors without elements
            if is_float_dtype(spec["dtype"]) and _numel(spec["shape"]) == 0:
                out[spec["name"]] = torch.empty(list(spec["shape"]))
        if not specs:
            return join_passthrough(c, out)
        bitstream = c.payload(PAYLOAD, kinds=[KIND]).data
        with tempfile.TemporaryDirectory(prefix="vaecompress-nnc-") as tmp:
            folder = Path(tmp)
            (folder / "bitstream.nnc").write_bytes(bitstream)
            python = self.python
            t0 = time.perf_counter()
            try:
                reply = _run_worker(python, "decode", folder, CODE_TIMEOUT_S)
            except _WorkerError as e:
                raise FormatError(f"NNC bitstream is corrupt: {e}") from None
            except subprocess.TimeoutExpired:
                raise FormatError(f"NNCodec did not finish decoding in {CODE_TIMEOUT_S:.0f} s") \
                    from None
            self.last_decode_worker_s = time.perf_counter() - t0
            self.last_decode_s = _seconds(reply)
            names = reply.get("names")
            files = {n: i for i, n in enumerate(names)} if isinstance(names, list) else {}
            expected = [f"t{i}" for i in range(len(specs))]
            if sorted(files) != sorted(expected) or len(files) != len(names or []):
                got = len(names) if isinstance(names, list) else "?"
                raise FormatError(f"NNC bitstream holds {got} tensors, the manifest "
                                  f"{len(specs)} coded ones")
            for name, spec in zip(expected, specs, strict=True):
                a = np.load(folder / f"out{files[name]}.npy", allow_pickle=False)
                if a.size != _numel(spec["shape"]):
                    raise FormatError(f"NNC bitstream gives tensor '{spec['name']}' {a.size} "
                                      f"values, the manifest {_numel(spec['shape'])}")
                out[spec["name"]] = torch.from_numpy(
                    np.ascontiguousarray(a, dtype=np.float32).reshape(spec["shape"]))
        return join_passthrough(c, out)


def _seconds(reply: dict[str, Any]) -> float | None:
    """The worker's own time of the NNCodec call, when it sent a sane one."""
    t = reply.get("elapsed_s")
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 else None


def main() -> int:
    """Check the installation: which interpreter, whether it works, a tiny round trip."""
    python = nncodec_python()
    print(f"NNCodec interpreter: {python}")
    why = _probe(python)
    if why is not None:
        print(f"not usable: {why}\n{NOT_INSTALLED}")
        return 1
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(32, 16, generator=gen) * 0.05, "b": torch.randn(32, generator=gen),
             "n": torch.tensor(3)}
    codec = NNCodecCodec()
    enc = codec.encode(state, CodecContext(progress=False))
    back = codec.decode(enc.container, {})
    err = float((back["w"] - state["w"]).abs().max())
    step = 2.0 ** (codec.settings.qp / 2 ** codec.settings.qp_density)
    ok = err <= 2 * step and torch.equal(back["n"], state["n"])
    print(f"round trip {'ok' if ok else 'FAILED'}: {enc.report['nnc_bytes']} bytes, "
          f"max |error| {err:.2e} (step {step:.2e})")
    return 0 if ok else 1
