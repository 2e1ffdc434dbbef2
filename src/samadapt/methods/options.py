"""The settings a method declares: :class:`Option`, its checks, and how it is listed.

Each method class declares its settings in an ``OPTIONS`` mapping (name -> :class:`Option`);
:meth:`samadapt.methods.base.AdaptationMethod.validate_options` checks the values given, and
:func:`option_rows` lists them for ``samadapt train --method M --help-options``.
"""

from __future__ import annotations

import builtins
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from samadapt.errors import InputError


@dataclass(frozen=True)
class Option:
    """One setting a method accepts, as a constructor keyword or the CLI's ``--option NAME=VALUE``.

    Attributes:
        type: ``bool``, ``int``, ``float``, ``str`` or ``list``.
        default: the value when the option is not given; None means the method works it out
            (``help`` says how), and then None may also be given explicitly.
        help: one line saying what the option changes.
        choices: the allowed values of a ``str`` option (empty: any string).
        low: smallest allowed number (None: no bound); ``low_open`` excludes it.
        high: largest allowed number (None: no bound); ``high_open`` excludes it.
        low_open: the bound ``low`` itself is not allowed.
        high_open: the bound ``high`` itself is not allowed.
        item: the type of a list's items, ``int`` or ``str``; a single ``str`` stands for a
            list of one.
        length: the exact length of a list (None: any length of at least 1).
        aliases: other names accepted for the option (e.g. the name a source document uses).
    """

    # builtins.type: in the class body, ``type`` names this field
    type: builtins.type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item: builtins.type | None = None
    length: int | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in (bool, int, float, str, list):
            raise InputError(f"an option's type must be bool, int, float, str or list, got {self.type!r}")
        if self.type is list and self.item not in (int, str):
            raise InputError(f"a list option's item type must be int or str, got {self.item!r}")

    @property
    def nullable(self) -> bool:
        """Whether None is allowed (options whose default is None)."""
        return self.default is None

    def _bounds(self) -> str:
        """The numeric range in words, e.g. ``" >= 0"``, ``" in (0, 1]"``; empty without bounds."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def allowed(self) -> str:
        """What values are allowed, in words (the end of an error message)."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.type is bool:
            text = "true or false"
        elif self.type is int:
            if self.low is not None and self.high is None and not self.low_open:
                text = f"an integer of at least {_num(self.low)}"
            else:
                text = "an integer" + self._bounds()
        elif self.type is float:
            text = "a finite number" + self._bounds()
        elif self.type is str:
            text = "a string"
        else:
            noun = "integers" if self.item is int else "names"
            size = f"{self.length} " if self.length else ""
            text = f"a list of {size}{noun}" + (" (or one name)" if self.item is str else "")
        return text + (" or null" if self.nullable else "")

    def type_label(self) -> str:
        """A short type for a table of options, e.g. ``int >= 1``, ``box | point``, ``list[int] (3)``."""
        if self.choices:
            return " | ".join(self.choices)
        if self.type is list:
            item_name = self.item.__name__ if self.item else "str"
            label = f"list[{item_name}]" + (f" ({self.length})" if self.length else "")
        else:
            label = self.type.__name__ + self._bounds()
        return label + (" or null" if self.nullable else "")

    def check(self, method: str, name: str, value: Any) -> Any:
        """The value normalised to a plain JSON-able type.

        Args:
            method: the method's name, for the message.
            name: the option's name, for the message.
            value: the value given.

        Raises:
            InputError: if the value has the wrong type or lies outside the allowed values.
        """
        if value is None and self.nullable:
            return None
        out = self._normalise(value)
        if out is None:
            raise InputError(f"{method} option {name} must be {self.allowed()}, got {value!r}")
        return out

    def _normalise(self, value: Any) -> Any:
        """The normalised value, or None when it is not allowed."""
        if self.type is bool:
            return bool(value) if isinstance(value, (bool, np.bool_)) else None
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                return None
            return value
        if self.type is list:
            items = [value] if isinstance(value, str) and self.item is str else value
            if not isinstance(items, (list, tuple)) or not items or (self.length and len(items) != self.length):
                return None
            out = [self._item(v) for v in items]
            return None if any(v is None for v in out) else out
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return None
        if self.type is int:
            if not isinstance(value, (int, np.integer)):
                return None
            number: int | float = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                return None
        return number if self._in_range(number) else None

    def _item(self, value: Any) -> Any:
        if self.item is str:
            return value if isinstance(value, str) and value else None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            return None
        return int(value) if self._in_range(int(value)) else None

    def _in_range(self, number: float) -> bool:
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        if self.high is not None and (number >= self.high if self.high_open else number > self.high):
            return False
        return True


def _num(x: float) -> str:
    """A bound as written in a message: 1 rather than 1.0."""
    return str(int(x)) if float(x).is_integer() else str(x)


def check_flag(value: Any, what: str) -> bool:
    """``value`` as a plain bool, for switches such as :meth:`AdaptationMethod.use_oracle_prompts`.

    Raises:
        InputError: if ``value`` is not a bool (numpy bools are accepted).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{what} takes True or False, got {value!r}")
    return bool(value)


def unknown_option(method: str, options: Mapping[str, Option], key: str) -> str:
    """The message for an option name a method does not declare.

    Args:
        method: the method's name.
        options: the options it declares (its ``OPTIONS``).
        key: the name given.
    """
    names = list(options)
    close = difflib.get_close_matches(key, names + [a for o in options.values() for a in o.aliases], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    accepted = ", ".join(names) if names else "none"
    return f"{method} has no option {key!r}{hint}; its options are: {accepted}"


def option_rows(options: Mapping[str, Option]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every option a method declares, in declaration order.

    The default is written as ``--option`` takes it: strings bare, everything else JSON
    (``true``, ``null``, ``[0, 1, 2]``); aliases are named at the end of the help.

    Args:
        options: the method class's ``OPTIONS``.
    """
    rows = []
    for name, opt in options.items():
        text = opt.help + (f"; also accepted as {', '.join(opt.aliases)}" if opt.aliases else "")
        default = opt.default if isinstance(opt.default, str) else json.dumps(opt.default)
        rows.append((name, opt.type_label(), default, text))
    return rows
