"""Waves: every rank handed out once, only after its declaration returned, a wave per declaration.

The fan-out's PUT count is one per wave (:mod:`services.coordinator.waves`); the wave's size is
``COSMIC_COORDINATOR_DECLARE_AHEAD`` ranks per thread (:class:`.config.CoordinatorSettings`).
"""

from __future__ import annotations

import threading
from collections import deque

import pytest

from services.coordinator import config
from services.coordinator.waves import Waves
from services.envconfig import SettingsError


def test_every_rank_is_handed_out_once_after_its_wave_was_declared() -> None:
    declared: list[list[int]] = []
    handed: list[int] = []
    lock = threading.Lock()

    def declare(wave: list[int]) -> None:
        with lock:
            declared.append(list(wave))

    waves = Waves(deque(range(200)), 64, declare)

    def work() -> None:
        while (rank := waves.next()) is not None:
            with lock:
                assert any(rank in wave for wave in declared), f"rank {rank} handed out before it was declared"
                handed.append(rank)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(handed) == list(range(200))
    assert [len(wave) for wave in declared] == [64, 64, 64, 8]  # one declaration (one PUT) per 64 ranks
    assert not waves.left()


def test_a_failed_declaration_hands_out_nothing_of_its_wave() -> None:
    def refuse(wave: list[int]) -> None:
        raise RuntimeError("S3 refused the journal")

    waves = Waves(deque(range(10)), 4, refuse)
    with pytest.raises(RuntimeError):
        waves.next()
    assert list(waves.todo) == list(range(10))  # still to be declared, none lost


def test_declare_ahead_is_a_setting_of_at_least_one() -> None:
    assert config.load(environ={"COSMIC_COORDINATOR_DECLARE_AHEAD": "16"}).declare_ahead == 16
    with pytest.raises(SettingsError, match="COSMIC_COORDINATOR_DECLARE_AHEAD"):
        config.load(environ={"COSMIC_COORDINATOR_DECLARE_AHEAD": "0"})
