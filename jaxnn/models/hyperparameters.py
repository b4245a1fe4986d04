"""Typed, range-checked config fields: `param` declares one, `check_fields` builds a frozen
dataclass from a mapping and refuses a bad key or value by name.

A model's hyperparameters (and every section of the run config, jaxnn.train.config) are a frozen
dataclass whose fields carry their type annotation, default and allowed values::

    @dataclasses.dataclass(frozen=True)
    class CnnConfig:
        kernel_size: int = param(3, ge=1)            # an int >= 1
        num_filters: int = param(128, ge=1)
        pooling: str = param("max", choices=("max", "mean"))
        dropout: float = param(0.0, ge=0, lt=1)      # a number in [0, 1)

    check_fields(CnnConfig, {"kernel_size": 5}, "model.cnn")  # -> CnnConfig(kernel_size=5, ...)
    check_fields(CnnConfig, {"kernel_sise": 5}, "model.cnn")  # ConfigError: unknown key ...

Types checked: ``int`` (not bool), ``float`` (an int is accepted and stored as float), ``bool``,
``str``, and ``X | None``. A dataclass may add cross-field checks in ``__post_init__`` by
raising `ConfigError` via `fail(field, value, allowed)`; its message is prefixed with the
section. This module imports nothing of jaxnn: the models, the run config and a user's package
use it alike.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConfigError", "check_fields", "fail", "field_names", "param"]


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message names the key, the value and
    what is allowed (``config.<key>=<value> is not allowed; allowed: ...``)."""


class _FieldError(ConfigError):
    """Raised inside a dataclass's checks, before the section prefix is known."""

    def __init__(self, field: str, value: object, allowed: str):
        super().__init__(f"{field}={value!r} is not allowed; {allowed}")
        self.field, self.value, self.allowed = field, value, allowed


def fail(field: str, value: object, allowed: str) -> typing.NoReturn:
    """Refuse ``field=value`` (from a dataclass's ``__post_init__``); ``allowed`` says what is,
    e.g. ``"allowed: a divisor of embed_dim=64"``. `check_fields` adds the section prefix."""
    raise _FieldError(field, value, allowed)


def param(
    default: Any,
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with a default and its allowed values: ``choices`` (a value among
    them), or bounds ``ge`` (>=), ``gt`` (>), ``le`` (<=), ``lt`` (<) for numbers."""
    meta = {"choices": None if choices is None else tuple(choices), "doc": doc}
    meta.update(ge=ge, gt=gt, le=le, lt=lt)
    return dataclasses.field(default=default, metadata=meta)


def field_names(cls: type) -> tuple[str, ...]:
    """The init fields of dataclass ``cls``, in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_ok(annotation: Any, value: Any) -> tuple[bool, Any, str]:
    """(ok, value converted, description of the type) for one annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return True, None, ""
        described = []
        for arg in args:
            if arg is type(None):
                described.append("None")
                continue
            ok, converted, what = _type_ok(arg, value)
            if ok:
                return True, converted, what
            described.append(what)
        return False, value, " or ".join(described)
    if annotation is bool:
        return isinstance(value, bool), value, "True, False"
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an int"
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value, "a number"
    if annotation is str:
        return isinstance(value, str), value, "a string"
    if isinstance(annotation, type):
        return isinstance(value, annotation), value, annotation.__name__
    return True, value, ""  # Any and other annotations: not checked


def _interval(meta: Mapping) -> str:
    low = f"[{meta['ge']}" if meta["ge"] is not None else f"({meta['gt']}"
    if meta["ge"] is None and meta["gt"] is None:
        low = "(-inf"
    high = f"{meta['le']}]" if meta["le"] is not None else f"{meta['lt']})"
    if meta["le"] is None and meta["lt"] is None:
        high = "inf)"
    return f"{low}, {high}"


def _check_value(name: str, annotation: Any, meta: Mapping, value: Any) -> Any:
    ok, value_out, what = _type_ok(annotation, value)
    choices = meta.get("choices")
    if choices is not None:
        if not ok or value not in choices:
            fail(name, value, f"allowed: {', '.join(map(str, choices))}")
        return value_out
    bounds = [meta.get(k) for k in ("ge", "gt", "le", "lt")]
    bounded = any(b is not None for b in bounds)
    if not ok:
        fail(name, value, f"allowed: {what}" + (f" in {_interval(meta)}" if bounded else ""))
    if value_out is None or not isinstance(value_out, int | float) or isinstance(value_out, bool):
        return value_out
    ge, gt, le, lt = bounds
    inside = not math.isnan(value_out)
    inside = inside and (ge is None or value_out >= ge) and (gt is None or value_out > gt)
    inside = inside and (le is None or value_out <= le) and (lt is None or value_out < lt)
    if not inside:
        if annotation is int and gt is None and le is None and lt is None:
            fail(name, value, f"allowed: an int >= {ge}")
        fail(name, value, f"allowed: {what} in {_interval(meta)}")
    return value_out


def check_fields(cls: type, values: Mapping[str, Any], section: str = "") -> Any:
    """``cls(**values)`` after checking every key and value against the fields of dataclass
    ``cls``; keys ``values`` lacks take the field's default.

    Raises:
      ConfigError: ``config.<section>.<key>=<value> is not allowed; ...`` for an unknown key
        (listing the known ones), a value of the wrong type or outside the field's range or
        choices, and for what ``cls.__post_init__`` refuses via `fail`.
    """
    prefix = f"{section}." if section else ""
    names = field_names(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"config.{prefix}{unknown[0]}={values[unknown[0]]!r} is not allowed; unknown key; "
            f"allowed keys here: {', '.join(prefix + n for n in sorted(names))}"
        )
    hints = _types(cls)
    kwargs = {}
    try:
        for f in dataclasses.fields(cls):
            if f.init and f.name in values:
                kwargs[f.name] = _check_value(
                    f.name, hints.get(f.name, Any), f.metadata, values[f.name]
                )
        return cls(**kwargs)
    except _FieldError as err:
        raise ConfigError(
            f"config.{prefix}{err.field}={err.value!r} is not allowed; {err.allowed}"
        ) from None
