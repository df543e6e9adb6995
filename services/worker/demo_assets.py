"""Demo assets, made once into one cache folder and reused: partitions and a fitted checkpoint.

Nothing can be downloaded at run time, so the demo's data and weights are made here: synthetic
partitions (:mod:`services.worker.synthetic`) of exact legacy sizes (or tiny ones for tests),
and a checkpoint of :class:`~services.worker.model.RedshiftModel` fitted to them in well under a
minute. The fit keeps the image branches at their seeded initialisation and trains the
magnitude branch and the fusion head on the image branches' cached features: the colours carry
the redshift signal, and training only the small MLPs is what fits in a minute on two cores.
Nothing here is ever committed; ``COSMIC_CACHE_DIR`` chooses the folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from services.accuracy import redshift_metrics
from services.cache import cache_dir
from services.keys import SAMPLES_PER_PARTITION
from services.logs import event
from services.worker.data import save_partition
from services.worker.model import RedshiftModel
from services.worker.synthetic import partition

log = logging.getLogger("cosmic.worker.assets")
CHECKPOINT_NAME = "demo-redshift-v2.pt"
#: Partition size label for tests: real layout, few samples.
TINY = "tiny"
TINY_SAMPLES = 64


def demo_partitions(size: str, count: int, root: Path | None = None) -> list[Path]:
    """Paths of partitions ``1..count`` of the given size label in the cache, generating the missing ones."""
    return write_partitions(size, count, (root or cache_dir()) / "partitions" / size)


def write_partitions(size: str, count: int, folder: Path,
                     on_write: Callable[[Path], None] | None = None) -> list[Path]:
    """``folder/1.pt .. folder/{count}.pt`` of the given size label, in the legacy layout (a saved
    TensorDataset of images, magnitudes, redshifts), seeded: the same size and number always give
    the same galaxies. Files already there are kept; ``on_write`` hears of each one written."""
    samples = TINY_SAMPLES if size == TINY else SAMPLES_PER_PARTITION.get(size)
    if samples is None:
        raise ValueError(f"unknown partition size {size!r}: use {', '.join([*SAMPLES_PER_PARTITION, TINY])}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        path = folder / f"{index}.pt"
        if not path.exists():
            partial = path.with_suffix(".pt.partial")
            save_partition(partition(index, samples), partial)
            partial.replace(path)  # never leave a half-written partition under its real name
            if on_write is not None:
                on_write(path)
        paths.append(path)
    return paths


#: Optimiser steps of the demo fit: a count, not a time budget, so the checkpoint is the same on a
#: busy machine as on an idle one (a time-boxed fit made 36 steps under load: MAE 0.17, R2 < 0).
FIT_STEPS = 400


def demo_checkpoint(root: Path | None = None, steps: int = FIT_STEPS, samples: int = 3072) -> Path:
    """The fitted demo checkpoint (a state_dict), fitting it first if the cache has none, and its
    export for the lean engine beside it (made if missing or made from another checkpoint)."""
    path = (root or cache_dir()) / "checkpoints" / CHECKPOINT_NAME
    if path.exists():
        _export(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model, metrics = fit(steps=steps, samples=samples)
    partial = path.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    _export(path)
    return path


def _export(checkpoint: Path) -> None:
    """Export the demo checkpoint unless its export is current; without the export extra the demo
    runs on torch, and says so (the worker logs ``export_missing`` too)."""
    try:
        from services.worker import export
    except ModuleNotFoundError as exc:
        event(log, "demo_checkpoint_not_exported", logging.WARNING, missing=exc.name,
              hint="pip install 'cosmic-rendezvous[export]'")
        return
    if not export.current(checkpoint):
        export.export(checkpoint)


def fit(steps: int, samples: int, seed: int = 7) -> tuple[RedshiftModel, dict[str, float]]:
    """Fit the magnitude branch and head for ``steps`` steps; returns the model and held-out metrics."""
    torch.manual_seed(seed)
    model = RedshiftModel().eval()
    train, held_out = partition(10_001, samples), partition(10_002, 512)
    images = torch.from_numpy(train.images)
    started = time.monotonic()
    with torch.inference_mode():
        image_features = torch.cat([model.vit(images), model.cnn(images)], dim=1)
    image_features = image_features.clone()  # a normal tensor, usable in autograd
    trainable = [*model.magnitudes.parameters(), *model.head.parameters()]
    optimiser = torch.optim.Adam(trainable, lr=1e-4)
    magnitudes = torch.from_numpy(train.magnitudes).float()
    targets = torch.from_numpy(train.redshifts).float()  # type: ignore[arg-type]
    for _ in range(steps):
        batch = torch.randint(0, samples, (256,))
        features = torch.cat([image_features[batch], model.magnitudes(magnitudes[batch])], dim=1)
        loss = torch.nn.functional.mse_loss(model.head(features).squeeze(1), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.inference_mode():
        predicted = model([torch.from_numpy(held_out.images), torch.from_numpy(held_out.magnitudes)]).squeeze(1)
    metrics = redshift_metrics(predicted.numpy(), held_out.redshifts)  # type: ignore[arg-type]
    metrics.update(steps=float(steps), seconds=round(time.monotonic() - started, 1))
    event(log, "demo_checkpoint_fitted", **{k: round(v, 4) for k, v in metrics.items()})
    return model, metrics


# -- command line: the coordinator side (no torch) runs this as a child process ------------------
def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Make (if absent) the demo checkpoint and partitions; print where they are.

    A command line rather than an import, because whoever seeds the embedded stack (the
    coordinator, ``cosmic demo``) must not import torch: it runs this as a child process.
    """
    parser = argparse.ArgumentParser(prog="python -m services.worker.demo_assets",
                                     description="Make the demo checkpoint and partitions in the cache folder.")
    parser.add_argument("--sizes", nargs="+", default=["25MB"],
                        help=f"partition size labels ({', '.join([*SAMPLES_PER_PARTITION, TINY])}); default 25MB")
    parser.add_argument("--count", type=int, default=4, help="partitions of each size (default 4)")
    parser.add_argument("--json", action="store_true", help="print the paths as one JSON line")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    root = cache_dir()
    if not (root / "checkpoints" / CHECKPOINT_NAME).exists():
        _say("fitting the demo checkpoint (once; about 2 minutes on 2 cores) ...")
    try:
        checkpoint = demo_checkpoint(root)
        partitions: dict[str, list[str]] = {}
        for size in args.sizes:
            missing = [i for i in range(1, args.count + 1) if not (root / "partitions" / size / f"{i}.pt").exists()]
            if missing:
                _say(f"generating {len(missing)} partition(s) of {size} (once) ...")
            partitions[size] = [str(path) for path in demo_partitions(size, args.count, root)]
    except ValueError as exc:
        _say(f"demo_assets: {exc}")
        return 2
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint), "partitions": partitions}))
    else:
        print(f"checkpoint: {checkpoint}")
        for size, paths in partitions.items():
            print(f"partitions {size}: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
