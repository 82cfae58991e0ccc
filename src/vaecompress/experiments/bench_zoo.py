"""The MNIST zoo as a bench task: fnn/cnn/rnn/lstm, judged by the rebuilt model's accuracy.

The models are trained once per training config and cached (`common.trained_model`, shared with
`reproduce`); `quick` trains them briefly, every other preset at the paper's config. A codec's
operating points are its own (`Codec.operating_points(preset)`). Fidelity is the test accuracy
of the rebuilt model against the original's (`acc_orig`, `acc_recon`, `acc_drop` in points).
Codecs that train on the task get cross-entropy on the MNIST training set
(`tasks.mnist.make_finetuner`); the data-free ones a classifier probe on noise images. The report
is `experiments.bench_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaecompress.codecs import get_codec_class
from vaecompress.data import MnistSplit, load_mnist
from vaecompress.experiments.bench import Point, Subject
from vaecompress.experiments.common import TrainedModel, evaluate_state, trained_model
from vaecompress.io import StateDict
from vaecompress.tasks.mnist import make_finetuner
from vaecompress.tasks.probe import Probe, classifier_probe
from vaecompress.training.finetune import Finetuner
from vaecompress.zoo import build_model, get_spec
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config

PRESETS = ("quick", "full", "ablation", "datafree")
MODELS = ("fnn", "cnn", "rnn", "lstm")


def grid(codec: str, preset: str) -> list[Point]:
    """The operating points of a codec: its own `operating_points(preset)`. `quick` is small
    enough for CI on one model; `full` sweeps each method across its range so the curves can be
    compared at equal accuracy; `datafree` keeps only the methods that need no training data."""
    cls = get_codec_class(codec)
    points = [dict(p) for p in cls.operating_points(preset)]
    if preset == "datafree":
        points = [p for p in points if not cls.method(p)[1]]
    return points


def default_codecs(preset: str = "full") -> tuple[str, ...]:
    """Every registered codec that has operating points for `preset`, in registry order."""
    import vaecompress.codecs as codecs

    return tuple(c for c in codecs.REGISTRY if grid(c, preset))


class ZooBench:
    """The bench task of the MNIST zoo at one of `PRESETS`; MNIST is read on first use."""

    name = "zoo"
    fidelity_fields: tuple[str, ...] = ("acc_orig", "acc_recon", "acc_drop")

    def __init__(self, preset: str = "quick", *, seed: int = 0,
                 device: torch.device | str = "cpu", progress: bool = True,
                 data_dir: str | None = None, retrain: bool = False) -> None:
        if preset not in PRESETS:
            raise ValueError(f"zoo bench preset must be one of {PRESETS}, not {preset!r}")
        self.preset = preset
        self.retrain = retrain
        self.seed = seed
        self.device = torch.device(device)
        self.progress = progress
        self.data_dir = data_dir
        self._data: tuple[MnistSplit, MnistSplit] | None = None
        self._trained: dict[str, TrainedModel] = {}
        self._probes: dict[str, Probe] = {}

    def model_preset(self) -> str:
        return "quick" if self.preset == "quick" else "paper"

    def _mnist(self) -> tuple[MnistSplit, MnistSplit]:
        if self._data is None:
            self._data = load_mnist(self.data_dir)
        return self._data

    def select_models(self, names: list[str] | None) -> tuple[str, ...]:
        return tuple(get_spec(m).name for m in (names or MODELS))

    def default_codecs(self) -> tuple[str, ...]:
        return default_codecs(self.preset)

    def grid(self, codec: str) -> list[Point]:
        return grid(codec, self.preset)

    def subject(self, name: str, checkpoints: Path) -> Subject:
        train, test = self._mnist()
        trained = trained_model(name, preset_config(self.model_preset(), name, self.seed),
                                train, test, device=self.device, progress=self.progress,
                                checkpoints=checkpoints, retrain=self.retrain)
        self._trained[name] = trained
        return Subject(name, trained.identity, trained.state)

    def finetuner(self, name: str) -> Finetuner:
        return make_finetuner(name, self._mnist()[0], device=self.device, seed=self.seed)

    def probe(self, name: str) -> Probe:
        # one per model, so that the inputs it makes by inversion (`Probe.synthesize`) are made
        # once for all the points of a sweep
        if name not in self._probes:
            self._probes[name] = classifier_probe(build_model(name), (1, 28, 28),
                                                  normalize=ZOO_NORMALIZE, seed=self.seed,
                                                  device=self.device)
        return self._probes[name]

    def fidelity(self, name: str, rebuilt: StateDict) -> dict[str, Any]:
        acc, _ = evaluate_state(name, rebuilt, self._mnist()[1], device=self.device)
        orig = self._trained[name].accuracy
        return {"acc_orig": orig, "acc_recon": acc, "acc_drop": orig - acc}

    def config(self) -> dict[str, Any]:
        # where each model's weights came from: the package's reference, or trained here
        return {"model_preset": self.model_preset(),
                "weights": {n: t.source for n, t in self._trained.items()}}

    def report(self, results: dict[str, Any], out: Path) -> str:
        from vaecompress.experiments.bench_report import write_bench_report

        return write_bench_report(results, out)
