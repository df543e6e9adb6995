"""What the planner knows of the worker's speed: a small JSON measured on the embedded stack.

``bench/calibrate.py`` runs cold jobs on the embedded stack at 1,769 MB (one vCPU under the local
runtime's CPU share) and writes these figures; the committed ``calibration.json`` is such a run on
this project's machine (its ``measured_on`` and ``command`` say which). Everything is per vCPU, so
that the planner can scale it to any Lambda memory size (:func:`services.function.lambda_vcpus`).
The file is checked field by field, as the price file is: a typo must fail loudly, not plan nonsense.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from services.coordinator.errors import CalibrationError
from services.coordinator.pricing import read_json

DEFAULT_PATH = Path(__file__).with_name("calibration.json")
SCHEMA = "cosmic.calibration/1"
_LABELS = ("schema", "measured_on", "command", "note")


@dataclass(frozen=True)
class Calibration:
    """The worker's costs, measured at ``memory_mb`` on the embedded stack."""

    schema: str
    #: Machine, date, load average: where these numbers come from.
    measured_on: str
    #: The command that measured them.
    command: str
    note: str
    #: The Lambda memory it was measured at, MB.
    memory_mb: float
    #: Samples per vCPU-second of a partition's parsing and inference (everything CPU-bound per sample).
    samples_per_vcpu_s: float
    #: vCPU-seconds of a cold sandbox's imports (Lambda's Init Duration): one thread, so it slows below 1 vCPU.
    init_vcpu_s: float
    #: vCPU-seconds of the model's download and load on a rank's first invocation (one thread too).
    load_vcpu_s: float
    #: Partition download rate, MB/s (the embedded stack's S3 is on loopback: AWS's may differ).
    download_mb_per_s: float
    #: Seconds a rank spends writing its results.
    upload_s: float
    #: Seconds the coordinator adds around the slowest rank (planning, fan-out, summary).
    job_overhead_s: float
    #: What each vCPU beyond the first adds to inference, 0..1 (1: perfect scaling).
    parallel_efficiency: float
    #: The worker's peak memory with one partition of ``peak_partition_mb``, MB ...
    peak_memory_mb: float
    peak_partition_mb: float
    #: ... and what each further MB of partition adds to it, MB.
    memory_per_partition_mb: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_calibration(path: str | Path | None = None) -> Calibration:
    """The calibration in ``path`` (default: ``calibration.json`` beside this module), validated."""
    where = Path(path) if path is not None else DEFAULT_PATH
    return parse(read_json(where, CalibrationError), where)


def parse(raw: Any, where: Path = DEFAULT_PATH) -> Calibration:
    if not isinstance(raw, dict):
        raise CalibrationError(where, "file", f"must hold a JSON object, got {type(raw).__name__}")
    names = [f.name for f in fields(Calibration)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise CalibrationError(where, unknown[0], "unknown field (a typo?)")
    values: dict[str, Any] = {}
    for name in names:
        value = raw.get(name)
        if name in _LABELS:
            if not isinstance(value, str) or not value.strip():
                raise CalibrationError(where, name, "required, a non-empty string")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise CalibrationError(where, name, f"required, a number, got {value!r}")
        elif not 0 <= value < 1e6 or (value == 0 and name in _POSITIVE):
            raise CalibrationError(where, name, f"must be {'positive' if name in _POSITIVE else '>= 0'}, got {value}")
        values[name] = value
    if values["schema"] != SCHEMA:
        raise CalibrationError(where, "schema", f"must be {SCHEMA!r}, got {values['schema']!r}")
    efficiency = values["parallel_efficiency"]
    if efficiency > 1:
        raise CalibrationError(where, "parallel_efficiency", f"must be within 0..1, got {efficiency}")
    return Calibration(**values)


_POSITIVE = ("memory_mb", "samples_per_vcpu_s", "download_mb_per_s", "peak_memory_mb", "peak_partition_mb")


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write ``calibration`` (checked as a read would check it) to ``path``."""
    where = Path(path)
    parse(calibration.to_json(), where)
    where.write_text(json.dumps(calibration.to_json(), indent=2) + "\n", encoding="utf-8")
    return where
