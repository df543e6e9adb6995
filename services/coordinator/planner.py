"""Which Lambda memory size and world size for a dataset: predicted time and cost, cheapest that meets a deadline.

``cosmic plan`` and ``POST /plans``. From a calibration measured on the embedded stack
(:mod:`.calibration`: samples per vCPU-second, start-up, download rate) it predicts, for each memory
size and world size, the seed-style row (duration per rank, wall time, cost, $ per million samples),
marks the cheapest configuration that meets the deadline (or, given a budget, the fastest within it)
and states the assumptions it made. The model, per rank of ``p`` partitions at ``v`` vCPUs:

    rank duration = load + download + compute + (p - 1) x max(compute, download) + upload
    wall time     = init + the slowest rank's duration + the coordinator's overhead

where compute = samples / (samples per vCPU-second x effective vCPUs), the next partition downloads
while one is computed, and init and load (one thread) slow down below one vCPU but gain nothing above.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.coordinator.calibration import Calibration
from services.coordinator.pricing import Prices
from services.function import MAX_MEMORY_MB, MIN_MEMORY_MB, lambda_vcpus

#: Samples per partition in the legacy data set (LEGACY.md); other sizes: MiB / 20,520 bytes per sample.
LEGACY_SAMPLES = {25.0: 1278, 50.0: 2556, 75.0: 3834, 100.0: 5113}
BYTES_PER_SAMPLE = 20_520
#: Memory sizes tried when none are given: half a vCPU, one, two, three and six.
DEFAULT_MEMORY_MB = (884, 1769, 3538, 5307, 10240)
#: Lambda's default account concurrency: more ranks than this queue (the plan says so).
ACCOUNT_CONCURRENCY = 1000
#: Memory kept free above the predicted peak: Lambda ends an invocation that reaches its configured memory.
MEMORY_HEADROOM = 1.1
MAX_CONFIGURATIONS = 400


class PlanRequest(BaseModel):
    """``POST /plans``: a dataset (partition size and count) and a deadline or a budget."""

    model_config = ConfigDict(extra="forbid")

    partition_mb: float = Field(gt=0, le=1024, description="size of one partition, MB (the seed's: 25, 50, 75, 100)")
    partitions: int = Field(ge=1, le=1_000_000, description="how many partitions the dataset has")
    deadline_s: float | None = Field(None, gt=0, le=86_400, description="the job must end within this, seconds")
    budget_usd: float | None = Field(None, gt=0, le=1_000_000, description="the job must cost at most this, $")
    memory_mb: list[int] | None = Field(None, min_length=1, max_length=20,
                                        description=f"Lambda memory sizes to try (default {DEFAULT_MEMORY_MB})")
    world_sizes: list[int] | None = Field(None, min_length=1, max_length=40,
                                          description="world sizes to try (default powers of 2 up to partitions)")
    architecture: Literal["x86_64", "arm64"] = "x86_64"

    @field_validator("memory_mb")
    @classmethod
    def _memory(cls, values: list[int] | None) -> list[int] | None:
        for value in values or []:
            if not MIN_MEMORY_MB <= value <= MAX_MEMORY_MB:
                raise ValueError(f"each memory size must be within {MIN_MEMORY_MB}..{MAX_MEMORY_MB} MB "
                                 f"(Lambda's sizes), got {value}")
        return sorted(set(values)) if values else None

    @field_validator("world_sizes")
    @classmethod
    def _worlds(cls, values: list[int] | None) -> list[int] | None:
        if values and min(values) < 1:
            raise ValueError(f"each world size must be at least 1, got {min(values)}")
        return sorted(set(values)) if values else None

    @model_validator(mode="after")
    def _goal(self) -> PlanRequest:
        if (self.deadline_s is None) == (self.budget_usd is None):
            raise ValueError("give exactly one of deadline_s (seconds) or budget_usd ($)")
        if self.world_sizes and max(self.world_sizes) > self.partitions:
            raise ValueError(f"world sizes must not exceed partitions ({self.partitions}): a rank needs a "
                             f"partition, got {max(self.world_sizes)}")
        count = len(self.memories) * len(self.worlds)
        if count > MAX_CONFIGURATIONS:
            raise ValueError(f"{len(self.memories)} memory sizes x {len(self.worlds)} world sizes is {count} "
                             f"configurations, over {MAX_CONFIGURATIONS}: ask for fewer")
        return self

    @property
    def memories(self) -> list[int]:
        return self.memory_mb or list(DEFAULT_MEMORY_MB)

    @property
    def worlds(self) -> list[int]:
        return self.world_sizes or default_world_sizes(self.partitions)


def samples_per_partition(partition_mb: float) -> int:
    return LEGACY_SAMPLES.get(float(partition_mb)) or max(1, round(partition_mb * 2**20 / BYTES_PER_SAMPLE))


def default_world_sizes(partitions: int) -> list[int]:
    sizes = {partitions}
    size = 1
    while size < partitions and len(sizes) < 24:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def effective_vcpus(vcpus: float, calibration: Calibration) -> float:
    """What ``vcpus`` are worth to inference: proportional below one, ``parallel_efficiency`` each above."""
    return vcpus if vcpus <= 1 else 1 + (vcpus - 1) * calibration.parallel_efficiency


def rank_duration(partitions: int, partition_mb: float, memory_mb: float, calibration: Calibration) -> float:
    """Seconds of one rank's invocation (its REPORT duration: init is not in it) over ``partitions``."""
    if partitions == 0:
        return 0.0
    vcpus = lambda_vcpus(memory_mb)
    compute = samples_per_partition(partition_mb) / (calibration.samples_per_vcpu_s * effective_vcpus(vcpus,
                                                                                                      calibration))
    download = partition_mb / calibration.download_mb_per_s
    load = calibration.load_vcpu_s / min(vcpus, 1.0)
    return load + download + compute + (partitions - 1) * max(compute, download) + calibration.upload_s


def predict(request: PlanRequest, memory_mb: int, world_size: int, calibration: Calibration,
            prices: Prices) -> dict[str, Any]:
    """One configuration's seed-style row."""
    vcpus = lambda_vcpus(memory_mb)
    init = calibration.init_vcpu_s / min(vcpus, 1.0)
    heavy, per_rank = request.partitions % world_size, request.partitions // world_size
    counts = [per_rank + 1] * heavy + [per_rank] * (world_size - heavy)
    durations = {count: rank_duration(count, request.partition_mb, memory_mb, calibration) for count in set(counts)}
    billed_s = sum(math.ceil((init + durations[count]) * 1000) / 1000 for count in counts)
    samples = samples_per_partition(request.partition_mb) * request.partitions
    gets, puts = request.partitions + world_size, 2 * world_size + 3  # partitions and checkpoint; results, summary
    cost = (billed_s * memory_mb / 1024 * prices.gb_second(request.architecture)
            + world_size * prices.lambda_requests_per_million / 1e6
            + (gets * prices.s3_get_per_thousand + puts * prices.s3_put_copy_post_list_per_thousand) / 1000)
    peak = calibration.peak_memory_mb + (request.partition_mb - calibration.peak_partition_mb) * \
        calibration.memory_per_partition_mb
    wall = init + max(durations.values()) + calibration.job_overhead_s
    return {"partition": f"{request.partition_mb:g}MB", "world_size": world_size, "memory_mb": memory_mb,
            "vcpus": round(vcpus, 3), "partitions_per_rank": max(counts), "cold_start_s": init,
            "duration_s": sum(durations[count] for count in counts) / world_size, "wall_s": wall,
            "cost_usd": cost, "usd_per_million_samples": cost / samples * 1e6, "predicted_peak_mb": peak,
            "fits": peak * MEMORY_HEADROOM <= memory_mb, "queued": world_size > ACCOUNT_CONCURRENCY,
            "meets": (wall <= request.deadline_s) if request.deadline_s is not None
            else (cost <= (request.budget_usd or 0))}


def plan(request: PlanRequest, calibration: Calibration, prices: Prices) -> dict[str, Any]:
    """Every configuration's prediction, the choice, and the assumptions behind them."""
    rows = [predict(request, memory, world, calibration, prices) for memory in request.memories
            for world in request.worlds]
    usable = [row for row in rows if row["meets"] and row["fits"]]
    if request.deadline_s is not None:
        chosen = min(usable, key=lambda row: (row["cost_usd"], row["wall_s"]), default=None)
        goal = f"the cheapest configuration that ends within {request.deadline_s:g} s"
    else:
        chosen = min(usable, key=lambda row: (row["wall_s"], row["cost_usd"]), default=None)
        goal = f"the fastest configuration that costs at most ${request.budget_usd:g}"
    for row in rows:
        row["chosen"] = row is chosen
    samples = samples_per_partition(request.partition_mb) * request.partitions
    return {"schema": "cosmic.plan/1", "request": request.model_dump(), "samples": samples, "goal": goal,
            "chosen": chosen, "rows": rows, "calibration": calibration.to_json(), "prices": prices.label,
            "assumptions": assumptions(calibration, request)}


def assumptions(calibration: Calibration, request: PlanRequest) -> list[str]:
    notes = [
        f"Speeds from {calibration.command} ({calibration.measured_on}): {calibration.samples_per_vcpu_s:.1f} "
        f"samples per vCPU-second, {calibration.init_vcpu_s:.2f} + {calibration.load_vcpu_s:.2f} vCPU-s of start-up "
        f"(imports, model load), {calibration.download_mb_per_s:.0f} MB/s of download.",
        "Lambda's CPU follows memory (1,769 MB: one vCPU; 10,240 MB: six); below one vCPU everything slows in "
        f"proportion, above it inference gains {calibration.parallel_efficiency:.0%} of each further vCPU and "
        "start-up (one thread) nothing.",
        "Every rank starts cold (Init Duration billed, as AWS bills it), and all ranks run at once; a partition "
        "downloads while the one before it is computed.",
        "Download rate is the embedded stack's (S3 on loopback); a Lambda reading S3 in-region may be slower, which "
        "lengthens every row by the same download time per partition.",
        f"Cost: billed duration (init included) x configured memory at {calibration_prices_note(request)}, plus "
        "Lambda requests and S3 GET/PUT requests; no free tier.",
        f"Peak memory {calibration.peak_memory_mb:.0f} MB at {calibration.peak_partition_mb:g}MB partitions, "
        f"{calibration.memory_per_partition_mb:g} MB more per partition MB; a row whose peak plus "
        f"{MEMORY_HEADROOM - 1:.0%} does not fit its memory is never chosen.",
    ]
    if max(request.worlds) > ACCOUNT_CONCURRENCY:
        notes.append(f"World sizes over {ACCOUNT_CONCURRENCY} (Lambda's default account concurrency) would queue: "
                     "their times assume a raised limit.")
    return notes


def calibration_prices_note(request: PlanRequest) -> str:
    return f"the {request.architecture} GB-second list price"


def answer(request: PlanRequest, fmt: str) -> Any:
    """``POST /plans``'s answer: the plan as JSON, or rendered as markdown (``fmt`` ``md``)."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    from services.coordinator.calibration import load_calibration
    from services.coordinator.pricing import load_prices
    from services.coordinator.report import render_plan

    made = plan(request, load_calibration(), load_prices())
    if fmt == "md":
        return PlainTextResponse(render_plan(made), media_type="text/markdown; charset=utf-8")
    return JSONResponse(made)
