"""Kubernetes resource quantities: parse CPU into cores and memory into bytes, and format them back.

A quantity is a decimal number, an optional exponent (``1e3``) and an optional suffix: binary
(``Ki Mi Gi Ti Pi Ei``) or decimal (``n u m k M G T P E``). See
https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?")
_FACTORS = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_MI = 2**20


def parse_quantity(text: str | int | float) -> Decimal:
    """The exact value of a quantity (``"250m"`` -> 0.25, ``"1Ki"`` -> 1024); ValueError if malformed."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number + (exponent or ""))
    except InvalidOperation as error:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from error
    return value * _FACTORS[suffix]


def parse_cpu(text: str | int | float) -> float:
    """A CPU quantity in cores: ``"250m"`` -> 0.25, ``"123456n"`` -> 0.000123456, ``"2"`` -> 2.0."""
    return float(parse_quantity(text))


def parse_memory(text: str | int | float) -> int:
    """A memory quantity in bytes, rounded up: ``"12345Ki"``, ``"100Mi"``, ``"1G"``."""
    return math.ceil(parse_quantity(text))


def format_cpu(cores: float) -> str:
    """Cores as millicores (``0.25`` -> ``"250m"``), rounded up to at least ``1m``."""
    return f"{max(1, math.ceil(round(cores * 1000, 6)))}m"


def format_memory(size: int) -> str:
    """Bytes as ``Mi`` when a whole number of mebibytes, else as plain bytes."""
    if size > 0 and size % _MI == 0:
        return f"{size // _MI}Mi"
    return str(size)
