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

import json
import logging
import os
import time
from pathlib import Path

import torch

from services.logs import event
from services.worker.accuracy import redshift_metrics
from services.worker.data import SAMPLES_PER_PARTITION, save_partition
from services.worker.model import RedshiftModel
from services.worker.synthetic import partition

log = logging.getLogger("cosmic.worker.assets")
CHECKPOINT_NAME = "demo-redshift-v1.pt"
#: Partition size label for tests: real layout, few samples.
TINY = "tiny"
TINY_SAMPLES = 64


def cache_dir() -> Path:
    """``COSMIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cosmic-rendezvous`` (``~/.cache/...``)."""
    configured = os.environ.get("COSMIC_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cosmic-rendezvous"


def demo_partitions(size: str, count: int, root: Path | None = None) -> list[Path]:
    """Paths of partitions ``1..count`` of the given size label, generating the missing ones."""
    samples = TINY_SAMPLES if size == TINY else SAMPLES_PER_PARTITION.get(size)
    if samples is None:
        raise ValueError(f"unknown partition size {size!r}: use {', '.join([*SAMPLES_PER_PARTITION, TINY])}")
    folder = (root or cache_dir()) / "partitions" / size
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        path = folder / f"{index}.pt"
        if not path.exists():
            partial = path.with_suffix(".pt.partial")
            save_partition(partition(index, samples), partial)
            partial.replace(path)  # never leave a half-written partition under its real name
        paths.append(path)
    return paths


def demo_checkpoint(root: Path | None = None, seconds: float = 40.0, samples: int = 3072) -> Path:
    """The fitted demo checkpoint (a state_dict), fitting it first if the cache has none."""
    path = (root or cache_dir()) / "checkpoints" / CHECKPOINT_NAME
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model, metrics = fit(seconds=seconds, samples=samples)
    partial = path.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def fit(seconds: float, samples: int, seed: int = 7) -> tuple[RedshiftModel, dict[str, float]]:
    """Fit the magnitude branch and head for about ``seconds``; returns the model and held-out metrics."""
    torch.manual_seed(seed)
    model = RedshiftModel().eval()
    train, held_out = partition(10_001, samples), partition(10_002, 512)
    started = time.monotonic()
    with torch.inference_mode():
        image_features = torch.cat([model.vit(train.images), model.cnn(train.images)], dim=1)
    image_features = image_features.clone()  # a normal tensor, usable in autograd
    trainable = [*model.magnitudes.parameters(), *model.head.parameters()]
    optimiser = torch.optim.Adam(trainable, lr=1e-4)
    magnitudes, targets = train.magnitudes.float(), train.redshifts.float()  # type: ignore[union-attr]
    steps = 0
    while time.monotonic() - started < seconds:
        batch = torch.randint(0, samples, (256,))
        features = torch.cat([image_features[batch], model.magnitudes(magnitudes[batch])], dim=1)
        loss = torch.nn.functional.mse_loss(model.head(features).squeeze(1), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    with torch.inference_mode():
        predicted = model([held_out.images, held_out.magnitudes]).squeeze(1)
    metrics = redshift_metrics(predicted.numpy(), held_out.redshifts.numpy())  # type: ignore[union-attr]
    metrics.update(steps=float(steps), seconds=round(time.monotonic() - started, 1))
    event(log, "demo_checkpoint_fitted", **{k: round(v, 4) for k, v in metrics.items()})
    return model, metrics
