"""Model zoo: the paper's four MNIST classifiers, training and evaluation."""

from vaecompress.zoo.models import MODELS, ModelSpec, build_model, count_params, get_spec

__all__ = ["MODELS", "ModelSpec", "build_model", "count_params", "get_spec"]
