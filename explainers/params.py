"""Parameter specs: one declaration per parameter, read by the API's validation, the CLI's flags,
the app's widgets and the benchmarks (so none of them lists parameters by hand).

A method declares its own in its file (``explainers.methods.<name>.METHOD.params``); the
protocol's (curve steps, substrate, seed...) are declared in ``explainers.api``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserError


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: its repr, cut short (a 1e300 or a 10 kB string stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Param:
    """One user-settable parameter.

    ``name`` is the API keyword (unique across the protocol and every method, e.g. ``ig_steps``);
    ``arg`` the keyword the method's ``explain`` takes (``steps``). A parameter has either a
    numeric range (``low``..``high``, inclusive; ``kind`` int or float), or ``kind`` str with
    ``choices`` (one of them) or without (free text, at most ``high`` characters), or ``kind=list``
    with ``choices`` (a list of distinct choices, in the order given: a list, or text with commas,
    the CLI's ``--flag a,b``; the app shows a checkbox per choice; an empty list means the
    default), or is read by its own ``parse`` (which raises ValueError on a bad value; ``allowed``
    says in words what it takes). A default of None means "the model decides" (e.g. a VLM's own
    answer); such a parameter is left out of a call that does not give it.
    """

    name: str
    default: Any
    help: str
    kind: type = int
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)  # choice -> what the app shows
    arg: str | None = None
    flag: str | None = None
    label: str | None = None  # the app's widget label (default: help)
    step: float | None = None  # the app's slider step for floats
    parse: Callable[[Any], Any] | None = None  # reads a value of its own form (e.g. a box's 4 numbers)
    allowed: str | None = None  # with parse: what it takes, in words

    @property
    def keyword(self) -> str:
        """The keyword the method's ``explain`` receives."""
        return self.arg or self.name

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def many(self) -> bool:
        """A list of choices (``kind=list``) rather than one value."""
        return self.kind is list

    def describe(self) -> str:
        """The allowed values in words, for messages and --help."""
        if self.many:
            return "a comma-separated list from " + ", ".join(self.choices)
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.parse is not None:
            return self.allowed or "text"
        if self.kind is str:
            return "text" + (f" of at most {int(self.high)} characters" if self.high is not None else "")
        whole = "a whole number" if self.kind is int else "a number"
        return f"{whole} from {self._number(self.low)} to {self._number(self.high)}"

    def _number(self, value: float | None) -> str:
        return str(int(value)) if self.kind is int and value is not None else str(value)

    def check(self, value: Any, label: str | None = None) -> Any:
        """``value`` in its canonical type (int, float or lower-case choice), or UserError naming
        ``label`` (default: the parameter's name) and what is allowed."""
        allowed = f"{label or self.name} must be {self.describe()}"
        if self.parse is not None:
            try:
                return self.parse(value)
            except UserError:
                raise
            except (TypeError, ValueError):
                raise UserError(f"{allowed}, not {shown(value)}") from None
        if self.many:
            return self._check_many(value, allowed)
        if self.choices:
            text = value.strip().lower() if isinstance(value, str) else value
            if not isinstance(text, str) or text not in self.choices:
                raise UserError(f"{allowed}, not {shown(value)}")
            return text
        if self.kind is str:
            if not isinstance(value, str):
                raise UserError(f"{allowed}, not {shown(value)}")
            text = value.strip()
            if self.high is not None and len(text) > self.high:
                raise UserError(f"{allowed}, not {len(text)} characters")
            return text
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"{allowed}, not {shown(value)}")
        assert self.low is not None and self.high is not None, f"{self.name}: a numeric parameter needs low and high"
        if isinstance(value, (int, np.integer)):  # compared as integers: 10**400 has no float
            if not self.low <= int(value) <= self.high:
                raise UserError(f"{allowed}, not {shown(int(value))}")
            return int(value) if self.kind is int else float(value)
        number = float(value)
        if not math.isfinite(number) or (self.kind is int and number != int(number)):
            raise UserError(f"{allowed}, not {shown(number)}")
        if not self.low <= number <= self.high:
            raise UserError(f"{allowed}, not {shown(number)}")
        return int(number) if self.kind is int else number

    def _check_many(self, value: Any, allowed: str) -> tuple[str, ...]:
        """A list parameter's value: the distinct choices in the order given (lower case)."""
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{allowed}, not {shown(value)}")
        chosen: list[str] = []
        for item in value:
            text = item.strip().lower() if isinstance(item, str) else item
            if text == "":
                continue
            if not isinstance(text, str) or text not in self.choices:
                raise UserError(f"{allowed}, not {shown(item)}")
            if text not in chosen:
                chosen.append(text)
        return tuple(chosen) or tuple(self.default)
