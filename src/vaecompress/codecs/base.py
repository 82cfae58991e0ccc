"""The codec contract and the registry that names every codec.

A codec turns a state_dict into a `Container` (manifest, codec state, payloads) and back. The
paper's VAE, later VAE codecs and every baseline are interchangeable entries here, measured by the
same harness. A codec declares which of its payloads are the compressed "code" (what the paper
counts) and which are decoder weights, so that both ratios can always be reported.

The contract, all of it on the class so that nothing outside `codecs/` names a codec:

- `name`, `version` (bumped whenever the payload layout changes; the reader keeps old versions),
  a frozen `Settings` dataclass with the defaults;
- `validate()`: checks the resolved settings when the codec is made (bad values are a one-line
  `UserError` before any work starts);
- `available()`: None when the codec can run here, else the one-line install hint;
- `externals`: names of the files the codec may write beside the container and read back
  (`Encoded.externals` / `decode(..., externals)`, keyed by these names);
- `operating_points(preset)`: the settings the bench measures ("quick", "full");
- `fidelity_knob(settings)`: the setting that trades size for fidelity (`Knob`), which
  `target.compress_within` searches for the smallest file that keeps a task's fidelity
  (`--max-drop`); None: the codec has none;
- `uses_task`: whether its quality depends on fine-tuning with the task (`CodecContext.finetune`);
- `lossless`, `exact_decode`: what the checks of `api` may expect of its decoding;
- `streams()`, `for_part(part, total)`: whether a large model's shards may be coded one at a
  time (`sharded`), and the codec for one shard;
- `encode(state, ctx) -> Encoded` and `decode(container, externals) -> state_dict`.

Codecs compose the tools of `vaecompress.coding`; no codec imports another.

Tensors a codec does not compress (integer buffers, flags) travel losslessly in one `aux`
payload; `split_passthrough` / `join_passthrough` do that the same way for every codec.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from vaecompress.coding.floats import split_floats
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_AUX, Container, Payload
from vaecompress.io import StateDict, state_from_bytes, state_to_bytes
from vaecompress.tasks.probe import Probe
from vaecompress.training.finetune import Finetuner

PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Knob:
    """A codec's setting that trades size for fidelity, as `target.compress_within` searches
    it: values in [lo, hi]; `finer` +1 when a larger value keeps more (an SNR), -1 when a smaller
    one does (a rate weight, NNCodec's qp); searched on log2 of the value when `log`, on
    integers when `integer`; the search first moves `step` (in those units) from the codec's
    default and stops when the bracket is `resolution` wide. `alongside`: settings the search
    holds at these values while it moves the knob (unless the caller set them). `given`: the
    caller's value of the knob's setting is not a conflict but where the search starts (a
    setting that both chooses a mode and sizes the file, as vae-rd's warm start `snr`)."""

    name: str
    lo: float
    hi: float
    finer: int
    step: float
    resolution: float
    log: bool = False
    integer: bool = False
    alongside: tuple[tuple[str, Any], ...] = ()
    given: bool = False


@dataclass
class CodecContext:
    """What an encoder may use besides the state_dict and its settings."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = True
    finetune: Finetuner | None = None  # the task's loss and data, for `uses_task` codecs
    label: str = ""  # shown on progress bars, e.g. the model name
    # Pre-trained parts that several models share (a decoder, a prior), by name, as bytes: a
    # codec that finds its part here uses it instead of training one, and references it as an
    # external rather than embedding it. No built-in codec reads it yet.
    shared: dict[str, bytes] = field(default_factory=dict)
    # A file where a codec that trains (a VAE, the RD optimization) keeps its resumable state
    # (`vaecompress.checkpoint`): a killed run given the same file resumes; None: no checkpoint.
    checkpoint: Path | None = None
    # The model run on synthetic inputs (`tasks.probe.Probe`), when its architecture is known:
    # the data-free codec weighs each tensor by the Fisher information it measures. None: the
    # weights alone.
    probe: Probe | None = None
    # When the state given to `encode` is a difference from a base model (`api.compress(base=)`):
    # the model itself. A codec that weighs its error relative to the weights (vae-rd-free)
    # weighs it relative to the model's, not the delta's, and runs its probe on the model.
    reference: Mapping[str, torch.Tensor] | None = None
    # With `reference`: the names of the tensors coded as their change from the base (the
    # others the base lacks, or are integers); vae-rd-free holds the change to `change_snr`.
    change: tuple[str, ...] = ()


@dataclass
class Encoded:
    """What `Codec.encode` returns: the container, the bytes of anything it references by sha256
    (e.g. a decoder kept in its own file), and a report for experiments (training curves...)."""

    container: Container
    externals: dict[str, bytes] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


class Codec(ABC):
    """One compression method. Subclasses set `name`, `version` and a frozen `Settings`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    # The newest version it reads, when it reads files a later step rewrote (a family's
    # members coded under a shared prior: `methods.rd.shared`); None: `version`.
    reads_version: ClassVar[int | None] = None
    Settings: ClassVar[type]
    externals: ClassVar[tuple[str, ...]] = ()  # files it may write beside the container
    uses_task: ClassVar[bool] = False  # fine-tunes with `CodecContext.finetune` when given
    # Decoding gives back every bit of the input, NaN and Inf included; a lossy codec
    # (False) refuses non-finite input weights and never decodes to non-finite ones.
    lossless: ClassVar[bool] = False
    # Decoding is integer or elementwise float arithmetic: the same bits on every machine, so
    # the recorded checksum of the rebuilt tensors is compared exactly. False for a decoder
    # with float reductions (a matrix product), compared within a tolerance (api.DECODED_KEY).
    exact_decode: ClassVar[bool] = True

    def __init__(self, settings: Any = None, **overrides: Any) -> None:
        base = settings if settings is not None else self.Settings()
        names = {f.name for f in dataclasses.fields(base)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(
                f"codec '{self.name}' has no setting {unknown[0]!r}; "
                f"settings: {', '.join(sorted(names))}"
            )
        self.settings = dataclasses.replace(base, **overrides)
        _check_types(self.name, self.settings)
        try:
            self.validate()
        except TypeError as e:  # e.g. `--set bits=abc` compared with a number
            raise UserError(f"codec '{self.name}': a setting has the wrong type ({e})") from None
        hint = self.available()
        if hint is not None:
            raise UserError(hint)

    def validate(self) -> None:
        """Raise a one-line `UserError` for settings this codec cannot use (default: all
        settings are acceptable)."""
        return None

    @classmethod
    def available(cls) -> str | None:
        """None if the codec can run here, else the one line saying how to install it."""
        return None

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        """(the name a result table gives the method these settings make, whether it uses the
        task's training data). One codec can make several methods: nncodec with `prune` is the
        pruned, fine-tuned model coded by NNCodec, a different method from NNCodec alone."""
        return cls.name, cls.uses_task

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        """Settings overrides the bench measures for `preset`: "quick" and "full" default to the
        codec's defaults; "datafree" (the methods that need no training data, swept densely
        enough to draw their curves) to the defaults of a codec that does not use the task;
        "ablation" (the variants that show what each ingredient of a codec contributes, the
        first being the reference) is empty unless the codec defines it."""
        if preset == "datafree":  # the methods that need the weights alone, swept densely
            return [] if cls.uses_task else [{}]
        return [{}] if preset in ("quick", "full") else []

    @classmethod
    def fidelity_knob(cls, settings: Mapping[str, Any], *, delta: bool = False) -> Knob | None:
        """The setting that trades size for fidelity under these settings (`Knob`; `delta`:
        coding a model against a base), or None (the default: a codec with nothing to search,
        a lossless one, a fixed bit width)."""
        return None

    def streams(self) -> bool:
        """Whether the parts of a model (the shards of a folder) may be coded one at a time,
        each into its own file, and still keep what these settings promise for the whole
        (`sharded`): True for a codec whose coding of a tensor depends on that tensor alone,
        or that splits its target between the parts (`for_part`). A caller streams only
        without a task, a probe or a base, which each need the whole model."""
        return False

    def for_part(self, part: int, total: int) -> Codec:
        """The codec for a part that holds `part` of the model's `total` floating-point
        weights, such that the parts, each coded alone, keep this codec's promise for the
        whole (default: this codec)."""
        return self

    def settings_json(self) -> dict[str, Any]:
        """The settings as the header and the bench's record keys hold them. A setting a
        codec's `Settings` names in `LATER` (one added after files were written, that changes
        only how the encoder works, never how a file is read) is left out at its default, so
        that a file or a record written before it existed is still what these settings make."""
        out = _jsonable(dataclasses.asdict(self.settings))
        for f in dataclasses.fields(self.settings):
            if f.name in getattr(self.settings, "LATER", ()) and out.get(f.name) == f.default:
                del out[f.name]
        return out

    def new_container(self, state: Mapping[str, torch.Tensor]) -> Container:
        manifest = [
            {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in state.items()
        ]
        return Container(
            codec={"name": self.name, "version": self.version, "settings": self.settings_json()},
            tensors=manifest,
        )

    @abstractmethod
    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        """Compress `state` into a container (payloads included)."""

    @abstractmethod
    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        """Rebuild the state_dict from a container and the bytes of its externals."""


def _check_types(codec: str, settings: Any) -> None:
    """Each setting of the type its default has (an int where an int is, a number where a float
    is, None only where the annotation allows it); containers are left to `validate`."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, default = getattr(settings, f.name), f.default
        allowed = typing.get_args(hints.get(f.name)) or (hints.get(f.name),)
        if value is None and type(None) in allowed:
            continue
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, int) and float not in allowed:
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, int | float):
            ok, what = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, what = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise UserError(f"{codec}: {f.name} must be {what}, got {value!r}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.name in REGISTRY:
        raise ValueError(f"codec {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a codec from the registry (tests that register a toy codec clean up with this)."""
    REGISTRY.pop(name, None)


def get_codec_class(name: str) -> type[Codec]:
    import vaecompress.codecs  # noqa: F401  (registers the built-in codecs)

    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown codec '{name}'; available: {', '.join(sorted(REGISTRY))}"
        ) from None


def peer_hint(not_installed: str, module: str, why: str | None) -> str | None:
    """`available()` of an optional peer package: None when it can be used (`why` is None),
    the one-line install hint when `module` is absent, else the hint and why in brackets."""
    if why is None:
        return None
    return not_installed if f"No module named '{module}" in why else f"{not_installed} [{why}]"


def import_failure(e: BaseException) -> str:
    """One line saying why an import failed (the `why` of `peer_hint`)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def make_codec(name: str, **settings: Any) -> Codec:
    return get_codec_class(name)(**settings)


def split_passthrough(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(floating tensors to compress, everything else kept exactly)."""
    return split_floats(state)


def add_passthrough(c: Container, raw: Mapping[str, torch.Tensor]) -> None:
    if raw:
        c.payloads.append(Payload(PASSTHROUGH, "safetensors", ROLE_AUX, state_to_bytes(raw)))


def read_passthrough(c: Container) -> StateDict:
    """The tensors a file keeps exactly (none when it has no passthrough payload)."""
    if PASSTHROUGH not in {p.name for p in c.payloads}:
        return {}
    return state_from_bytes(c.payload(PASSTHROUGH).data, what="passthrough tensors")


def join_passthrough(c: Container, decoded: StateDict, raw: StateDict | None = None) -> StateDict:
    """Merge the passthrough tensors (`raw`, if already read) back and return a state_dict in
    the manifest's order."""
    raw = read_passthrough(c) if raw is None else raw
    merged = {**decoded, **raw}
    out: StateDict = {}
    for spec in c.tensors:
        name = spec["name"]
        if name not in merged:
            raise FormatError(f"file is missing tensor '{name}' of its manifest")
        t = merged[name]
        if list(t.shape) != list(spec["shape"]):
            raise FormatError(
                f"tensor '{name}' decodes to shape {list(t.shape)}, manifest says {spec['shape']}"
            )
        out[name] = t.to(getattr(torch, spec["dtype"]))
    return out
