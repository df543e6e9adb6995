"""The 422 for a prefix without partitions: the key pattern filled in, and the commands that fill it."""

from __future__ import annotations

import pytest

from services.coordinator.errors import PlanError
from services.coordinator.payload import JobRequest
from services.coordinator.planning import choose_partitions


class Listing:
    """What S3Store's listing calls answer for a bucket with ``25MB/1.pt`` and a model folder."""

    def objects(self, bucket: str, prefix: str):
        return iter([("25MB/1.pt", "e", 10)] if prefix == "25MB/" else [])

    def folders(self, bucket: str, prefix: str = ""):
        return ["25MB/", "Anomaly Detection/", ".cosmic/"]


def request(prefix: str) -> JobRequest:
    return JobRequest.model_validate({"bucket": "cosmicai-data", "file_limit": "all", "batch_size": 8,
                                      "object_type": "folder", "S3_object_name": "Anomaly Detection",
                                      "script": "s.py", "result_path": "results/x", "data_bucket": "cosmicai-data",
                                      "data_prefix": prefix})


def test_a_missing_size_prefix_names_the_keys_and_the_data_commands():
    with pytest.raises(PlanError) as refused:
        choose_partitions(Listing(), request("100MB"))  # type: ignore[arg-type]
    text = str(refused.value)
    assert refused.value.field == "data_prefix"
    assert "a job reads 100MB/1.pt, 100MB/2.pt, ..." in text and "{i}" not in text
    assert "prefixes that exist: 25MB, Anomaly Detection." in text and ".cosmic" not in text
    assert "`cosmic data generate --size 100MB --count N`" in text
    assert "`cosmic data upload data/100MB --prefix 100MB --bucket cosmicai-data` (add `--embedded`" in text
    assert "`cosmic data ls --bucket cosmicai-data`" in text


def test_any_other_prefix_is_filled_in_too():
    with pytest.raises(PlanError) as refused:
        choose_partitions(Listing(), request("surveys/dr17/"))  # type: ignore[arg-type]
    text = str(refused.value)
    assert "a job reads surveys/dr17/1.pt," in text
    assert "--size 25MB|50MB|75MB|100MB" in text and "--prefix surveys/dr17 " in text
