"""Could the default choose its fidelity per model without data? What the synthetic inputs it
already runs (the probe) say about a classifier's accuracy drop (issue 18).

    python benchmarks/probe_target.py   # -> benchmarks/results/probe_target.json

The default codec keeps one weights SNR (30 dB) on every model, because the SNR a model needs
differs from model to model and the codec sees no data. When the architecture is known, the
codec could run the model on its probe (uniform-noise images, `tasks.mnist.mnist_probe`) and
search the coarsest SNR whose outputs there stay close: the share of probe images whose
predicted class changes, the KL divergence of the predictions, or the output SNR. That works
only if those measures track the accuracy drop on real digits, alike on every model. This
measures them: the four zoo classifiers (paper preset) and the three classifiers of
`default_codec.py` that no default was tuned on, each compressed by the default codec with the
probe (`vae-rd-free`, Fisher weighting) at a sweep of SNRs, with the drop on the MNIST test set
beside the probe's measures on 4,096 fresh noise images (another seed than the probe's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchlib import finish_run, start_run, write_json

SNRS = (4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 30.0)
PROBE_IMAGES = (64, 64)  # batches, batch size of the fresh noise images
PROBE_SEED = 123


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/probe_target.json")
    args = p.parse_args(argv)
    run = start_run("probe_target", argv if argv is not None else sys.argv[1:])
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from default_codec import held_out_models

    from vaecompress.api import compress, decompress
    from vaecompress.codecs import CodecContext
    from vaecompress.data import load_mnist
    from vaecompress.experiments.common import trained_model
    from vaecompress.tasks.mnist import IMAGE_SHAPE, accuracy, mnist_probe
    from vaecompress.tasks.probe import classifier_probe
    from vaecompress.zoo import build_model
    from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config

    torch.set_num_threads(1)
    train, test = load_mnist()
    models: list[tuple[str, Any, Any, bool]] = [
        (name, net, norm, False) for name, net, norm in held_out_models(train)]
    for name in ("fnn", "cnn", "rnn", "lstm"):
        tm = trained_model(name, preset_config("paper", name, 0), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        models.append((name, net.eval(), ZOO_NORMALIZE, True))
    rows = []
    for name, net, norm, tuned in models:
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        acc0 = accuracy(net, test, normalize=norm)
        probe = mnist_probe(net, normalize=norm, seed=0)
        fresh = classifier_probe(net, IMAGE_SHAPE, normalize=norm, seed=PROBE_SEED,
                                 batches=PROBE_IMAGES[0], batch_size=PROBE_IMAGES[1])
        with torch.no_grad():
            ref = torch.cat([fresh.outputs(state, i) for i in range(fresh.batches)])
        classes = torch.bincount(ref.argmax(-1), minlength=ref.shape[1])
        points = []
        for snr in SNRS:
            res = compress(state, None, ctx=CodecContext(progress=False, seed=0, probe=probe),
                           snr=snr)
            rebuilt = decompress(res.data, res.externals)
            net.load_state_dict(rebuilt)
            acc = accuracy(net, test, normalize=norm)
            with torch.no_grad():
                out = torch.cat([fresh.outputs(rebuilt, i) for i in range(fresh.batches)])
            kl = torch.nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1),
                                            log_target=True, reduction="batchmean")
            centred = ref - ref.mean(-1, keepdim=True)
            out_snr = 10 * torch.log10(centred.square().sum() / (out - ref).square().sum())
            points.append({"snr": snr, "ratio_honest": res.accounting.ratio_honest,
                           "acc_drop": acc0 - acc,
                           "probe_flips": float((out.argmax(-1) != ref.argmax(-1)).float().mean()),
                           "probe_kl": float(kl), "probe_output_snr_db": float(out_snr)})
            print(f"{name} {snr:g} dB: drop {acc0 - acc:+.2f}, probe flips "
                  f"{points[-1]['probe_flips']:.4f}", file=sys.stderr, flush=True)
        net.load_state_dict(state)
        rows.append({"model": name, "tuned_on": tuned, "acc_orig": acc0,
                     "probe_top_class_share": float(classes.max()) / len(ref),
                     "points": points})
    write_json(args.out, {**finish_run(run), "snrs": list(SNRS),
                          "probe_images": PROBE_IMAGES[0] * PROBE_IMAGES[1], "models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
