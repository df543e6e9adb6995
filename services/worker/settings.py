"""Settings of the inference handler: ``COSMIC_<FIELD>`` variables, then these defaults.

Read once per sandbox (at import of the handler), so a Lambda function's environment decides
them, as the local runtime's ``COSMIC_*`` environment does for its sandboxes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from services import envconfig

ENV_PREFIX = "COSMIC_"


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker invocation infers, where it keeps files, and how long the legacy script may run."""

    #: Inference precision (see :mod:`services.worker.inference`); empty means the predictor's default.
    worker_precision: str = ""
    #: Where downloaded checkpoints and legacy model folders are kept across warm invocations
    #: (Lambda's writable ``/tmp``).
    worker_scratch_dir: str = tempfile.gettempdir()
    #: Seconds the legacy script (``script`` mode) may run before it is killed.
    worker_script_timeout: float = 840.0
    #: Partitions downloaded ahead of the one being inferred (memory: one more partition each).
    worker_prefetch: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.worker_script_timeout <= 900:
            raise envconfig.SettingsError(
                f"worker_script_timeout must be within (0, 900] s, got {self.worker_script_timeout}")
        if not 0 <= self.worker_prefetch <= 8:
            raise envconfig.SettingsError(f"worker_prefetch must be within 0..8, got {self.worker_prefetch}")


def load() -> WorkerSettings:
    return envconfig.load(WorkerSettings, ENV_PREFIX)
