"""Training: one loop that runs a step function, and what hooks onto it.

- `loop`: `Loop`, which runs a step function for a number of iterations (steps or epochs) and
  knows nothing of the model, and its hooks: `Resume` (checkpoints: save, resume, reject),
  `ProgressBar`, `EarlyStopping`, `Broadcast` (every process takes rank 0's result);
- `distributed`: the torch.distributed group of the processes torchrun started;
- `finetune`: retraining a model's tensors on a task (`Finetuner`, `ModuleLoss`), the step
  function the codecs that fine-tune share.

Boundary: the methods (the paper's VAE, the rate-distortion VAE, the zoo's networks) and the
codecs bring their step functions; nothing here knows a codec or a file.
"""
