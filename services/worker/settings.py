"""Settings of the inference handler: ``COSMIC_WORKER_<FIELD>`` variables, then these defaults.

Read once per sandbox (at import of the handler), so a Lambda function's environment decides
them, as the local runtime's environment does for its sandboxes. The function's name and
timeout, which the coordinator and the local runtime read too, are in :mod:`services.function`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from services import envconfig

ENV_PREFIX = "COSMIC_WORKER_"
#: The values of ``COSMIC_WORKER_ENGINE`` (:mod:`services.worker.engines` decides what they run).
ENGINES = ("auto", "openvino", "torch", "torch-fp32", "torch-bf16-mlp")


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker invocation infers, where it keeps files, and how long the legacy script may run."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {"threads": "COSMIC_THREADS", "malloc_tune": "COSMIC_MALLOC_TUNE"}

    #: Inference engine (see :mod:`services.worker.engines`): auto, openvino, torch, torch-fp32, torch-bf16-mlp.
    engine: str = "auto"
    #: The torch Predictor's precision (see :mod:`services.worker.inference`); empty means its default.
    precision: str = ""
    #: Where downloaded checkpoints and legacy model folders are kept across warm invocations
    #: (Lambda's writable ``/tmp``).
    scratch_dir: str = tempfile.gettempdir()
    #: Seconds the legacy script (``script`` mode) may run before it is killed.
    script_timeout: float = 840.0
    #: Partitions downloaded ahead of the one being inferred (memory: one more partition each).
    prefetch: int = 1
    #: Inference threads; 0: the CPUs this process may run on. The local runtime sets each
    #: sandbox's share of the machine's cores.
    threads: int = 0
    #: Keep freed tensor memory in the heap (glibc ``mallopt``, see :func:`.inference.keep_freed_memory`).
    malloc_tune: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.script_timeout <= 900:
            raise envconfig.SettingsError(
                f"COSMIC_WORKER_SCRIPT_TIMEOUT must be within (0, 900] s, got {self.script_timeout}")
        if not 0 <= self.prefetch <= 8:
            raise envconfig.SettingsError(f"COSMIC_WORKER_PREFETCH must be within 0..8, got {self.prefetch}")
        if self.engine not in ENGINES:
            raise envconfig.SettingsError(f"COSMIC_WORKER_ENGINE must be one of {', '.join(ENGINES)}, "
                                          f"got {self.engine!r}")
        if self.threads < 0:
            raise envconfig.SettingsError(f"COSMIC_WORKER_THREADS must be 0 (all CPUs) or more, got {self.threads}")


def load() -> WorkerSettings:
    return envconfig.load(WorkerSettings)
