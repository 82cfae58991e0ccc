import json

import pytest
import torch

from vaecompress.cli import main
from vaecompress.data import MnistSplit
from vaecompress.tasks.mnist import accuracy, make_finetuner
from vaecompress.zoo import MODELS, build_model, count_params
from vaecompress.zoo.train import TrainConfig, train_model

TABLE1 = {"fnn": 185_300, "cnn": 122_270, "rnn": 54_538, "lstm": 214_282}


@pytest.mark.parametrize("name", list(TABLE1))
def test_param_counts_match_table1(name: str) -> None:
    assert count_params(build_model(name)) == TABLE1[name] == MODELS[name].params


@pytest.mark.parametrize("name", list(TABLE1))
def test_forward_shape(name: str) -> None:
    out = build_model(name)(torch.zeros(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_cnn_neurons_match_table1() -> None:
    net = build_model("cnn")
    x = torch.zeros(1, 1, 28, 28)
    sizes = [x.numel()]
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, torch.nn.ReLU):
            sizes.append(x.numel())
    assert sizes == [784, 3136, 1568, 588]  # then FC 200 and 10


def test_zoo_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["params"] for r in rows} == TABLE1
    assert next(r for r in rows if r["name"] == "cnn")["neurons"] == [784, 3136, 1568, 588, 200, 10]


def _toy_split(n: int, seed: int) -> MnistSplit:
    """Two classes a linear model separates: bright top half vs bright bottom half."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.int64)
    images[labels == 0, :14] += 200
    images[labels == 1, 14:] += 200
    return MnistSplit(images.clamp(0, 255).to(torch.uint8).numpy(), labels.numpy())


def test_training_on_a_small_subset_learns() -> None:
    train, test = _toy_split(512, 0), _toy_split(200, 1)
    untrained = accuracy(build_model("fnn"), test)
    res = train_model("fnn", train, TrainConfig(epochs=2, batch_size=32, seed=0), progress=False)
    assert res.epoch_loss[-1] < res.epoch_loss[0]
    acc = accuracy(res.model, test)
    assert acc > 95.0 and acc > untrained


def test_training_is_reproducible_from_a_seed() -> None:
    train = _toy_split(256, 0)
    a = train_model("cnn", train, TrainConfig(epochs=1, batch_size=64, seed=3), progress=False)
    b = train_model("cnn", train, TrainConfig(epochs=1, batch_size=64, seed=3), progress=False)
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_finetuner_loss_uses_the_given_tensors() -> None:
    ft = make_finetuner("fnn", _toy_split(256, 0), batch_size=32)
    state = dict(build_model("fnn").state_dict())
    batch = next(ft.batches())
    zeroed = {k: torch.zeros_like(v) for k, v in state.items()}
    assert abs(float(ft.loss(zeroed, batch)) - float(torch.log(torch.tensor(10.0)))) < 1e-5
    assert float(ft.loss(state, batch)) != float(ft.loss(zeroed, batch))
