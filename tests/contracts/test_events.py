"""The captured worker events in tests/events replayed through the worker's event parser.

Valid events parse to the mode ``expected.json`` gives and survive a round trip in their own
form; invalid ones fail naming the field ``expected.json`` gives. How the files were captured,
and how to capture them again, is in tests/events/capture.py.
"""

from __future__ import annotations

import pytest

from services.contracts import EventError, legacy_item, parse_event
from tests.events import capture

EVENTS, EXPECTED = capture.stored()
VALID = sorted(name for name, expected in EXPECTED.items() if "mode" in expected)
INVALID = sorted(name for name, expected in EXPECTED.items() if "field" in expected)


def test_every_event_has_one_expectation() -> None:
    assert sorted(EVENTS) == sorted(EXPECTED) == sorted(VALID + INVALID)
    assert {"native.json", "legacy-map-item.json", "script.json", "selftest.json"} <= set(VALID)


@pytest.mark.parametrize("name", VALID)
def test_valid_event_parses_and_round_trips(name: str) -> None:
    raw = EVENTS[name]
    event = parse_event(raw)
    assert event.mode == EXPECTED[name]["mode"]
    assert parse_event(event.to_dict()) == event
    if "version" in raw:
        assert event.to_dict() == raw, "every field of the versioned form, and no other"
    else:
        assert legacy_item(event) == raw, "what the legacy Map item says survives the trip"


@pytest.mark.parametrize("name", INVALID)
def test_invalid_event_fails_naming_the_field(name: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(EVENTS[name])
    assert caught.value.field == EXPECTED[name]["field"], EXPECTED[name]["why"]
    assert EXPECTED[name]["field"] in str(caught.value)


def test_the_files_are_what_the_producers_make_now() -> None:
    """A change to the event or to a producer shows here: run ``python -m tests.events.capture``."""
    pytest.importorskip("pydantic")  # the coordinator's payload
    pytest.importorskip("boto3")  # the deploy's smoke test, through the invoker
    events, expected = capture.capture()
    stale = sorted(name for name in events.keys() | EVENTS.keys() if events.get(name) != EVENTS.get(name))
    assert not stale, f"{stale} differ from what the code makes: run `python -m tests.events.capture`, review the diff"
    assert expected == EXPECTED
