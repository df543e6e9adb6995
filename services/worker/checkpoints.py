"""Checkpoints: loading a state_dict without running code, and building the model from it.

What the worker accepts, best first (:func:`choose_checkpoint`): ``*.cosmic.safetensors`` (what
``cosmic convert-checkpoint`` writes), any other ``.safetensors``, then a ``torch.save`` d
state_dict (``.pt``/``.pth``/``.bin``/``.ckpt``), raw or wrapped under ``model``/``state_dict``/
``model_state_dict``. Pickles are read with ``weights_only=True`` only, so a checkpoint can never
run code inside a worker. The legacy checkpoint, a whole pickled ``DataParallel`` model, is refused
with :class:`LegacyCheckpointError`, which tells the user the one command that converts it.

Names are mapped onto :class:`~services.worker.model.RedshiftModel` 's in one table,
:data:`LEGACY_NAMES`, shared with the converter: a state_dict saved from the original AstroMAE
fine-tune model (``model.module.state_dict()``) loads as well as one saved from ours.

A checkpoint we cannot use is a :class:`CheckpointError` saying which file, why and what to do
(the worker's error tree is drawn in :mod:`services.worker.errors`).
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from services.worker.checkpoint_names import CONVERTED_SUFFIX, PICKLE_SUFFIXES, choose_checkpoint, converted_path
from services.worker.errors import CheckpointError, LegacyCheckpointError
from services.worker.model import RedshiftModel

#: Named here too, where the converter and the tests have always found them.
__all__ = ["CONVERTED_SUFFIX", "PICKLE_SUFFIXES", "build_model", "choose_checkpoint", "converted_path",
           "load_state_dict", "save_state_dict"]

#: Keys under which training scripts commonly nest the state_dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIX = "module."  # DataParallel's
_SHOWN = 8  # names listed in an error, before "and N more"
_GLOBAL = re.compile(r"GLOBAL (\S+)")  # torch's words for a refused (or blocked) global

#: Original AstroMAE fine-tune names -> ours, applied in order, each once, to every name (after
#: ``module.`` is stripped). A replacement of None drops the name: ``conv2d_init`` is the same
#: module object as ``vis_inception.0``, so its tensors appear twice in the original state_dict.
#: Sources: ``blocks/model_vit_inception.py`` (``ViT_Astro``) and ``blocks/photoz.py``
#: (``Input_Mix_Model``, ``InceptionBlock``, ``ConvBlock``) of the public AstroMAE code.
LEGACY_NAMES: tuple[tuple[str, str | None], ...] = (
    (r"^inception_model\.conv2d_init\.", None),
    (r"^inception_model\.vis_inception\.8\.branch3\.", None),  # built by the original, never run
    (r"^(cls_token$|pos_embed$|patch_embed\.|blocks\.|fc_norm\.|head\.)", r"vit.\1"),
    (r"^vit_block\.", "vit.proj."),
    (r"^concat_block\.", "head."),
    (r"^inception_model\.magnitude_block\.", "magnitudes."),
    (r"^inception_model\.vis_inception\.10\.", "cnn.proj.0."),  # after Flatten (9): Linear, ReLU, Linear
    (r"^inception_model\.vis_inception\.12\.", "cnn.proj.2."),
    (r"^inception_model\.vis_inception\.", "cnn.features."),
    (r"\.branch1\.", ".b1."),  # InceptionBlock: 1x1, 1x1-3x3, 1x1-5x5, maxpool-1x1
    (r"\.branch2\.", ".b3."),
    (r"\.branch3\.", ".b5."),
    (r"\.branch4\.", ".pool."),
    (r"\.conv\.", ".0."),  # ConvBlock's conv and bn are our conv_block's Sequential 0 and 1
    (r"\.bn\.", ".1."),
)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by name, read without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such checkpoint file ({path})", checkpoint=str(path))
    if path.name.endswith(".safetensors"):
        loaded: object = _load_safetensors(path)
    else:
        loaded = _load_pickle(path)
    return strip_prefix(_unwrap(loaded, path.name), path.name)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({type(exc).__name__}: {exc})",
                              checkpoint=str(path)) from None


@functools.cache
def _allow_namespace() -> None:
    """MAE-style training checkpoints carry their argparse Namespace next to the weights: let
    ``weights_only`` build it, for the whole process, once (``safe_globals(...)`` per load edits a
    process-wide set and would race with loads in other threads; see ``data._allow_tensor_dataset``)."""
    torch.serialization.add_safe_globals([argparse.Namespace])


def _load_pickle(path: Path) -> object:
    try:
        _allow_namespace()
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise _refused_global(path, str(exc)) from None
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path.name}: cannot be read as a torch checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})", checkpoint=str(path)) from None


def _refused_global(path: Path, message: str) -> CheckpointError:
    """Why ``weights_only`` refused the file: a legacy whole model (convertible) or anything else."""
    from services.worker.convert import is_model_global  # convert imports this module: deferred

    match = _GLOBAL.search(message)
    name = match.group(1) if match else None
    if name and is_model_global(name):
        return LegacyCheckpointError(
            f"{path.name}: a whole pickled model ({name}), which workers do not unpickle; convert it once with "
            f"`cosmic convert-checkpoint {path}` and use the {CONVERTED_SUFFIX} file it writes beside it",
            checkpoint=str(path))
    if name is None:
        return CheckpointError(f"{path.name}: cannot be read as a torch checkpoint ({_torch_reason(message)})",
                               checkpoint=str(path))
    return CheckpointError(f"{path.name}: refused: it references {name}, which a checkpoint may not "
                           f"(expected a state_dict of tensors)", checkpoint=str(path))


def _unwrap(loaded: object, name: str) -> dict[str, torch.Tensor]:
    """The state_dict itself, when ``loaded`` is one or wraps one under a :data:`WRAPPER_KEYS` key."""
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return _tensors_only(loaded[key], name)
        return _tensors_only(loaded, name)
    raise CheckpointError(f"{name}: holds a {type(loaded).__name__}, not a state_dict (a dict of tensors)",
                          checkpoint=name)


def _tensors_only(mapping: Mapping[object, object], name: str) -> dict[str, torch.Tensor]:
    others = [str(key) for key, value in mapping.items() if not isinstance(key, str) or
              not isinstance(value, torch.Tensor)]
    if others or not mapping:
        keys = f"entries that are not named tensors: {listing(others)}" if others else "no tensors"
        raise CheckpointError(f"{name}: not a state_dict: {keys} (accepted: a dict of tensors, or one under "
                              f"{', '.join(repr(k) for k in WRAPPER_KEYS)})", checkpoint=name)
    return dict(mapping)  # type: ignore[arg-type]


def strip_prefix(state_dict: Mapping[str, torch.Tensor], name: str = "state_dict") -> dict[str, torch.Tensor]:
    """Names without DataParallel's leading ``module.``, refusing two that become one."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state_dict.items():
        short = key.removeprefix(_PREFIX)
        if short in out:
            raise CheckpointError(f"{name}: {origin[short]!r} and {key!r} would both be {short!r} without "
                                  f"{_PREFIX!r}; which one is meant is unclear")
        out[short], origin[short] = tensor, key
    return out


def map_names(state_dict: Mapping[str, torch.Tensor], ours: Iterable[str]) -> tuple[dict[str, torch.Tensor],
                                                                                     list[str]]:
    """``state_dict`` under our names, and the names that map to none of ``ours``.

    A name already ours is kept; any other goes through :data:`LEGACY_NAMES`. Unmapped names are
    kept under their own name, so a strict load reports them as unexpected.
    """
    ours = set(ours)
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        target = key if key in ours else legacy_name(key)
        if target is None:
            continue  # a known alias of another entry
        if target not in ours:
            unmapped.append(key)
            target = key
        if target in mapped:
            raise CheckpointError(f"two entries map onto {target!r}, the second from {key!r}")
        mapped[target] = tensor
    return mapped, unmapped


def legacy_name(key: str) -> str | None:
    """Our name for an original AstroMAE parameter name (None: a known alias, to drop)."""
    for pattern, replacement in LEGACY_NAMES:
        if replacement is None:
            if re.search(pattern, key):
                return None
            continue
        key = re.sub(pattern, replacement, key, count=1)
    return key


def build_model(state_dict: Mapping[str, torch.Tensor]) -> RedshiftModel:
    """A :class:`RedshiftModel` in eval mode holding exactly ``state_dict`` 's tensors (strict).

    The model is built on the meta device and takes ``state_dict`` 's tensors as its own (cast to
    the model's dtypes where they differ): random initialisation of 16 M weights that would be
    overwritten at once costs a cold start a second or more.
    """
    with torch.device("meta"):
        model = RedshiftModel()
    reference = model.state_dict()
    mapped, _ = map_names(strip_prefix(state_dict), reference)
    missing = sorted(set(reference) - set(mapped))
    unexpected = sorted(set(mapped) - set(reference))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the redshift model: missing {len(missing)} "
                              f"({listing(missing)}); unexpected {len(unexpected)} ({listing(unexpected)})")
    fitted = {name: tensor.to(device="cpu", dtype=reference[name].dtype) for name, tensor in mapped.items()}
    try:
        model.load_state_dict(fitted, strict=True, assign=True)
    except RuntimeError as exc:  # shapes: load_state_dict lists every mismatch, one a line
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise CheckpointError(f"checkpoint does not fit the redshift model: {listing(details)}") from None
    if any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
        raise CheckpointError("checkpoint does not fit the redshift model: a tensor was left unloaded")
    return model.eval()


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state_dict`` as safetensors, atomically: readers see the old file or the whole new one."""
    from safetensors.torch import save_file

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in state_dict.items()}
    try:
        save_file(_unshared(tensors), partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory with an earlier one: safetensors refuses shared storage."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return out


def listing(names: list[str]) -> str:
    """The first few names, and how many more: for errors that must stay one readable line."""
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "") if names else "none"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"


def _torch_reason(message: str) -> str:
    """The unpickler's own words inside torch's weights_only message (advice paragraphs dropped)."""
    paragraphs = [part.strip() for part in message.split("\n\n") if part.strip()]
    paragraphs = [part for part in paragraphs if not part.startswith(("Check the documentation", "Weights only"))]
    return paragraphs[-1].splitlines()[0] if paragraphs else "unreadable pickle"
