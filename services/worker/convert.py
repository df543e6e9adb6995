"""``cosmic convert-checkpoint``: a legacy whole-model pickle -> our safetensors state_dict.

The legacy checkpoint is ``torch.save(DataParallel(ViT_Astro(...)))``: unpickling it normally
needs the original source tree and timm 0.4.12 importable, and runs whatever the pickle says.
Here it is read by :class:`RestrictedUnpickler` instead, whose ``find_class`` knows only
:data:`ORIGINAL_CLASSES` (mapped onto inert :class:`StandIn` classes, so the module tree comes back
as plain data: each node's ``_parameters``, ``_buffers`` and ``_modules`` dicts) and
:data:`SAFE_CALLABLES` (torch's tensor rebuild helpers and a few containers). Any other global,
``posix.system`` or ``builtins.eval`` say, raises :class:`RefusedGlobal` before anything is called.

The tree is flattened to dotted names as ``state_dict()`` would, ``module.`` is stripped, the
original names are mapped onto ours through :data:`services.worker.checkpoints.LEGACY_NAMES`
(one table, shared with the worker's loader), and the result is written with
:func:`~services.worker.checkpoints.save_state_dict` beside the original, then loaded back into the
model to check it. If some names cannot be mapped but every tensor's shape matches our model's in
order, the tensors are taken by position, and a warning says so.

Original class names, from the public AstroMAE fine-tune code (the inference scripts do
``from blocks.model_vit_inception import ViT_Astro``; ``blocks/model_vit_inception.py`` imports
``InceptionBlock`` and ``Input_Mix_Model`` from ``blocks.photoz``, where ``ConvBlock`` lives too) and
timm 0.4.12's module layout (``Block`` and ``Attention`` in ``vision_transformer``; ``Mlp``,
``PatchEmbed`` and ``DropPath`` under ``timm.models.layers``). ``models_vit.VisionTransformer`` is
MAE's fine-tune ViT, allowed in case a checkpoint holds the whole encoder. Assumption: the pickle
names these classes by these module paths, as it does when the scripts run from the source root.

Exceptions: ``CheckpointError`` (``services.worker.checkpoints``) -> :class:`RefusedGlobal`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import pickle
import sys
import types
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from services.logs import event
from services.worker.checkpoints import (
    WRAPPER_KEYS,
    build_model,
    converted_path,
    listing,
    load_state_dict,
    map_names,
    save_state_dict,
    strip_prefix,
)
from services.worker.errors import CheckpointError, LegacyCheckpointError, RefusedGlobal
from services.worker.model import RedshiftModel, parameter_count

log = logging.getLogger("cosmic.worker.convert")
T = TypeVar("T")

#: Classes a legacy checkpoint may name, each read into an inert :class:`StandIn`.
ORIGINAL_CLASSES: frozenset[str] = frozenset({
    "torch.nn.parallel.data_parallel.DataParallel",
    # AstroMAE fine-tune model (blocks/model_vit_inception.py, blocks/photoz.py)
    "blocks.model_vit_inception.ViT_Astro",
    "blocks.photoz.Input_Mix_Model",
    "blocks.photoz.InceptionBlock",
    "blocks.photoz.ConvBlock",
    # MAE's ViT and timm 0.4.12's parts of it
    "models_vit.VisionTransformer",
    "timm.models.vision_transformer.VisionTransformer",
    "timm.models.vision_transformer.Block",
    "timm.models.vision_transformer.Attention",
    "timm.models.layers.mlp.Mlp",
    "timm.models.layers.patch_embed.PatchEmbed",
    "timm.models.layers.drop.DropPath",
    # torch.nn built-ins
    *(f"torch.nn.modules.{name}" for name in (
        "linear.Linear", "linear.Identity", "conv.Conv2d", "batchnorm.BatchNorm2d", "normalization.LayerNorm",
        "activation.ReLU", "activation.GELU", "dropout.Dropout", "container.Sequential", "container.ModuleList",
        "pooling.MaxPool2d", "pooling.AvgPool2d", "flatten.Flatten")),
})

#: Functions and types a legacy checkpoint may call: they build tensors and containers, nothing else.
SAFE_CALLABLES: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "torch.device": torch.device,  # DataParallel.src_device_obj
}
_PY2_MODULES = {"__builtin__": "builtins"}  # protocol-2 pickles name builtins the Python 2 way


def is_model_global(name: str) -> bool:
    """Whether ``name`` (``module.qualname``) is a legacy model class this converter can read."""
    return name in ORIGINAL_CLASSES


class StandIn:
    """An inert object in place of an original class: it keeps the pickled state and does nothing."""

    original = ""

    def __new__(cls, *args: object, **kwargs: object) -> StandIn:
        return super().__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.original}: pickled state is a {type(state).__name__}, not a dict")
        self.__dict__.update(state)


@functools.cache
def stand_in(qualified: str) -> type[StandIn]:
    """The one stand-in class for ``qualified`` (named after it, for messages)."""
    return type(qualified.rsplit(".", 1)[-1], (StandIn,), {"original": qualified})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; any other raises :class:`RefusedGlobal`."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{_PY2_MODULES.get(module, module)}.{name}"
        if qualified in SAFE_CALLABLES:
            return SAFE_CALLABLES[qualified]
        if qualified in ORIGINAL_CLASSES:
            return stand_in(qualified)
        raise RefusedGlobal(qualified)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


#: What ``torch.load(pickle_module=...)`` uses: it subclasses ``Unpickler`` and calls ``load`` for
#: the old (pre-zip) format's header records.
RESTRICTED_PICKLE = types.ModuleType("cosmic_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def read_legacy(path: Path) -> object:
    """The pickled object in ``path``, with stand-ins for model classes; refuses anything else."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                raise CheckpointError(f"{path.name}: a TorchScript archive, not a pickled model; "
                                      f"not supported by convert-checkpoint", checkpoint=str(path))
    try:
        return torch.load(path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except RefusedGlobal as exc:
        raise RefusedGlobal(exc.name, path.name) from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch and pickle raise many types for a truncated or foreign file
        raise CheckpointError(f"{path.name}: cannot be read as a pickled model ({type(exc).__name__}: {exc})",
                              checkpoint=str(path)) from None


def flatten(root: object) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a stand-in module tree by dotted name, as ``state_dict()``.

    ``root`` may also be a dict holding the model under one of the usual wrapper keys.
    """
    if isinstance(root, Mapping):
        root = next((root[key] for key in WRAPPER_KEYS if isinstance(root.get(key), StandIn)), root)
    if not isinstance(root, StandIn):
        raise CheckpointError(f"holds a {type(root).__name__}, not a pickled model")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set())
    return out


def _collect(node: StandIn, prefix: str, out: dict[str, torch.Tensor], path: set[int]) -> None:
    if id(node) in path:
        raise CheckpointError(f"module tree has a cycle at {prefix or 'the root'}")
    state = vars(node)
    skipped = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, tensor in _dict(state, kind, node).items():
            if tensor is None or (kind == "_buffers" and name in skipped):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in _dict(state, "_modules", node).items():
        if child is None:
            continue
        if not isinstance(child, StandIn):
            raise CheckpointError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        _collect(child, f"{prefix}{name}.", out, path | {id(node)})


def _dict(state: dict[str, Any], key: str, node: StandIn) -> Mapping[str, Any]:
    value = state.get(key) or {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{node.original}.{key} is a {type(value).__name__}, not a dict")
    return value


def to_our_names(flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``flat`` (original names) under our model's names: by the name table, else by position."""
    with torch.device("meta"):
        reference = RedshiftModel().state_dict()  # names, shapes and order only
    mapped, unmapped = map_names(strip_prefix(flat), reference)
    if not unmapped:
        return mapped
    by_order = _match_by_order(flat, reference)
    if by_order is None:
        raise CheckpointError(f"{len(unmapped)} of {len(flat)} tensors have names that map onto none of the model's "
                              f"({listing(unmapped)}), and their shapes do not match the model's in order either")
    event(log, "checkpoint_names_matched_by_order", logging.WARNING, tensors=len(by_order),
          unmapped=len(unmapped), first_unmapped=unmapped[0])
    return by_order


def _match_by_order(flat: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor] | None:
    """Tensors paired with the model's by position, when every shape matches (aliases counted once)."""
    unique = list({id(tensor): tensor for tensor in flat.values()}.values())
    if len(unique) != len(reference):
        return None
    pairs = list(zip(reference.items(), unique, strict=True))
    if any(ours.shape != theirs.shape or ours.dtype.is_floating_point != theirs.dtype.is_floating_point
           for (_, ours), theirs in pairs):
        return None
    return {name: theirs for (name, _), theirs in pairs}


@dataclass(frozen=True)
class Conversion:
    output: Path
    tensors: int
    parameters: int
    source: str  # "legacy model" or "state_dict"


def convert(checkpoint: Path, output: Path | None = None) -> Conversion:
    """Convert ``checkpoint`` (a legacy whole model, or any state_dict we read) to our safetensors file."""
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else converted_path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint.name}: no such checkpoint file ({checkpoint})", checkpoint=str(checkpoint))
    if output.resolve() == checkpoint.resolve():
        raise CheckpointError(f"{output}: the output would overwrite the checkpoint itself; pass another --output")
    if not output.parent.is_dir():
        raise CheckpointError(f"{output.parent}: output folder does not exist")
    try:
        flat, source = load_state_dict(checkpoint), "state_dict"
    except LegacyCheckpointError:
        flat, source = _named(checkpoint, flatten, read_legacy(checkpoint)), "legacy model"
    state_dict = _named(checkpoint, to_our_names, flat)
    _named(checkpoint, build_model, state_dict)  # refuse to write what the worker could not load
    save_state_dict(state_dict, output)
    model = build_model(load_state_dict(output))  # and check what was written
    return Conversion(output, len(state_dict), parameter_count(model), source)


def _named(checkpoint: Path, step: Callable[[Any], T], value: Any) -> T:
    """``step(value)``, its CheckpointError prefixed with the checkpoint's file name."""
    try:
        return step(value)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint.name}: {exc}", checkpoint=str(checkpoint)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="the legacy checkpoint (a pickled model) or a state_dict")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the state_dict (default: <stem>.cosmic.safetensors beside the checkpoint)")
    parser.add_argument("--no-export", dest="export", action="store_false",
                        help="do not also export it for the lean engine (`cosmic export`, needs the export extra)")


def run(args: argparse.Namespace) -> int:
    try:
        result = convert(args.checkpoint, args.output)
    except (CheckpointError, OSError) as exc:
        print(f"cosmic convert-checkpoint: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.checkpoint} ({result.source}): {result.tensors} tensors, {result.parameters:,} parameters; "
          f"checked by loading it into the redshift model")
    print(f"wrote {result.output}")
    return _export(result.output) if args.export else 0


def _export(converted: Path) -> int:
    """Export the converted state_dict beside it (``cosmic export``): a cold start without torch."""
    try:
        from services.worker.export import export
    except ModuleNotFoundError as exc:
        print(f"not exported: {exc.name} is not installed (pip install 'cosmic-rendezvous[export]', then "
              f"`cosmic export {converted}`); the worker runs the checkpoint on torch meanwhile", file=sys.stderr)
        return 0
    try:
        done = export(converted)
    except (CheckpointError, OSError) as exc:
        print(f"cosmic convert-checkpoint: export failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported it, verified (mean |diff| {done.mean_abs_diff:.1e}): wrote {done.path} and {done.manifest.name}")
    return 0
