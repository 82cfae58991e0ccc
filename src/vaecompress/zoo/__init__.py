"""Model zoo: the paper's four MNIST classifiers and their training; how any classifier is
measured and fine-tuned on MNIST is the task's (`tasks.mnist`)."""

from vaecompress.zoo.models import MODELS, ModelSpec, build_model, count_params, get_spec

__all__ = ["MODELS", "ModelSpec", "build_model", "count_params", "get_spec"]
