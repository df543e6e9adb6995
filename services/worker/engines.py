"""Which engine runs a rank's inference: the lean exported model, or the torch Predictor.

Torch-free on purpose (the native path imports this and must never import torch). The engines:

* ``openvino``: the model exported once by ``cosmic export`` (an ONNX file beside the checkpoint,
  with its SHA-256), run by OpenVINO in float32. No torch: a cold start skips torch's 1-2 s import.
* ``torch-fp32`` and ``torch-bf16-mlp``: the torch :class:`~services.worker.inference.Predictor`
  in that precision (``bf16-mlp`` only on a CPU with native bfloat16, else fp32).
* ``torch``: the torch Predictor in ``COSMIC_WORKER_PRECISION`` (its own ``auto`` rule).
* ``auto`` (default): :func:`resolve_engine`'s rule, measured by ``bench/engines.py`` (README,
  "Which engine is the default"): the cold rank's total time (start-up plus inference) on 25MB
  and 100MB partitions, each engine measured in the same run, with native bf16 on and masked.

Whichever lean engine is chosen, a sandbox meeting a checkpoint without an export runs torch
(and logs that an export would start faster); one without torch needs the export.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from services.worker import settings as worker_settings

ENGINES = worker_settings.ENGINES
LEAN = "openvino"
TORCH_ENGINES = tuple(name for name in ENGINES if name.startswith("torch"))


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX); without it bf16 is emulated and slower.

    ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16`` masks it for oneDNN (torch's kernels), so it
    masks it here too: that is how the bench measures the CPUs Lambda may give, on this one.
    """
    if sys.platform != "linux":
        return False
    masked = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if masked and masked not in ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                                 "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16"):
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_threads() -> int:
    """``COSMIC_WORKER_THREADS`` when the runtime sets it, else the CPUs this process may run on."""
    configured = worker_settings.load().threads
    if configured:
        return configured
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


#: ``auto``'s rule: whether the CPU has native bf16 -> the engine with the shortest cold rank
#: (start-up plus inference) at 25MB, the users' partitions, unless another is shorter at both 25MB
#: and 100MB, as measured by ``bench/engines.py`` (README, "Which engine is the default"). OpenVINO
#: on both: on an idle machine it was shortest at both sizes, with bf16 on and with it masked.
AUTO_RULE: dict[bool, str] = {False: LEAN, True: LEAN}


def resolve_engine(engine: str, has_bf16: bool | None = None) -> str:
    """The engine ``engine`` (a setting) means on this CPU; ``auto`` applies :data:`AUTO_RULE`."""
    if engine not in ENGINES:
        raise ValueError(f"COSMIC_WORKER_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    chosen = AUTO_RULE[cpu_has_bf16() if has_bf16 is None else has_bf16]
    if chosen == LEAN and importlib.util.find_spec(LEAN) is None:  # an image without it: torch, as before
        return "torch"
    return chosen


def torch_precision(engine: str, precision: str) -> str:
    """The torch Predictor's precision for a torch engine (``torch`` keeps ``COSMIC_WORKER_PRECISION``)."""
    if engine == "torch-fp32":
        return "fp32"
    if engine == "torch-bf16-mlp":
        return "bf16-mlp"
    return precision or "auto"
