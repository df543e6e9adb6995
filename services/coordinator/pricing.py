"""AWS prices for the job report, read from one labelled file (``prices.json``).

Prices change and differ by region, so they live in data, not code, and every figure the
report prints can say which region and which month's list prices it used. The file is checked
field by field: a typo in it must fail loudly, not quietly price a job at zero.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.coordinator.errors import PricesError

DEFAULT_PATH = Path(__file__).with_name("prices.json")
ARCHITECTURES = ("x86_64", "arm64")
_RATES = ("lambda_gb_second_x86_64", "lambda_gb_second_arm64", "lambda_requests_per_million",
          "s3_put_copy_post_list_per_thousand", "s3_get_per_thousand")
_LABELS = ("region", "as_of", "currency", "note")
_OPTIONAL = ("sources",)


@dataclass(frozen=True)
class Prices:
    """List prices in ``currency`` for ``region`` as read in ``as_of`` (YYYY-MM)."""

    region: str
    as_of: str
    currency: str
    note: str
    lambda_gb_second_x86_64: float
    lambda_gb_second_arm64: float
    lambda_requests_per_million: float
    s3_put_copy_post_list_per_thousand: float
    s3_get_per_thousand: float

    def gb_second(self, architecture: str = "x86_64") -> float:
        """The Lambda compute price per GB-second for ``architecture`` (x86_64 or arm64)."""
        if architecture not in ARCHITECTURES:
            expected = ", ".join(ARCHITECTURES)
            raise ValueError(f"unknown Lambda architecture {architecture!r}: expected one of {expected}")
        return self.lambda_gb_second_arm64 if architecture == "arm64" else self.lambda_gb_second_x86_64

    @property
    def label(self) -> str:
        """How a report names these prices, e.g. ``us-east-1 list prices of 2026-11 (USD)``."""
        return f"{self.region} list prices of {self.as_of} ({self.currency})"


def load_prices(path: str | Path | None = None) -> Prices:
    """The prices in ``path`` (default: ``prices.json`` beside this module), validated."""
    where = Path(path) if path is not None else DEFAULT_PATH
    return _parse(where, read_json(where, PricesError))


def read_json(where: Path, error: Callable[[Path, str, str], Exception]) -> Any:
    """A data file's JSON; ``error(where, "file", reason)`` raised when it cannot be read or parsed."""
    try:
        return json.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(where, "file", f"cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(where, "file", f"not valid JSON: {exc}") from None


def _parse(where: Path, raw: Any) -> Prices:
    if not isinstance(raw, dict):
        raise PricesError(where, "file", f"must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_RATES) - set(_LABELS) - set(_OPTIONAL))
    if unknown:
        raise PricesError(where, unknown[0], "unknown field (a typo?)")
    labels = {name: _label(where, raw, name) for name in _LABELS}
    if not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", labels["as_of"]):
        raise PricesError(where, "as_of", f"must be the date the prices were read, YYYY-MM, got {labels['as_of']!r}")
    rates = {name: _rate(where, raw, name) for name in _RATES}
    return Prices(**labels, **rates)


def _label(where: Path, raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PricesError(where, name, "required, a non-empty string")
    return value


def _rate(where: Path, raw: dict[str, Any], name: str) -> float:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PricesError(where, name, f"required, a number, got {value!r}")
    if not 0 < value < 1_000:
        raise PricesError(where, name, f"must be a positive price, got {value!r}")
    return float(value)
