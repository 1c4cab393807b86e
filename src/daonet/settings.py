"""Settings declared once: a config dataclass field carries its help text and bounds; the checks and the CLI options
come from that declaration.

``audit_setting(default, "help", min=1)`` on a field of a config dataclass (e.g. :class:`daonet.audit.AuditConfig`)
is all there is: :func:`check_settings` enforces the bounds and choices with an error that names the CLI option,
and :func:`cli_parameters` turns the fields into Typer options (a tuple field is a comma-separated option), so the
command line never restates a default, a bound or a help text by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from .errors import InputError

__all__ = ["Setting", "setting", "check_settings", "cli_parameters", "from_cli", "option_name"]


@dataclass(frozen=True)
class Setting:
    """What a user sees of one config field."""

    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    cli: bool = True  # False: set by the program (e.g. derived from another option), not a CLI option


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: Iterable[Any] | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help text and bounds (``min``/``max`` apply to every item of a tuple)."""
    meta = {"setting": Setting(help, min, max, tuple(choices) if choices is not None else None, cli)}
    return field(default=default, metadata=meta)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _declared(cls: Any) -> list[tuple[dataclasses.Field, Setting]]:
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def check_settings(obj: Any) -> None:
    """Every declared bound and choice of ``obj``'s fields, with an error that names the option."""
    for f, s in _declared(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if s.choices is not None and v not in s.choices:
                raise InputError(f"{option_name(f.name)} must be one of {', '.join(map(str, s.choices))}, got {v!r}")
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if s.min is not None and v < s.min:
                raise InputError(f"{option_name(f.name)} must be at least {s.min:g}, got {v}")
            if s.max is not None and v > s.max:
                raise InputError(f"{option_name(f.name)} must be at most {s.max:g}, got {v}")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def cli_parameters(cls: Any, *, skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    """Typer options for the declared fields of ``cls`` (keyword-only parameters with ``Annotated`` types)."""
    import typer

    hints = typing.get_type_hints(cls)
    out = []
    for f, s in _declared(cls):
        if not s.cli or f.name in skip:
            continue
        tp, optional = _unwrap(hints[f.name])
        help_text = s.help + (f" (one of {', '.join(map(str, s.choices))})" if s.choices and
                              typing.get_origin(tp) is not tuple else "")
        default: Any = f.default
        if typing.get_origin(tp) is tuple:  # comma-separated on the command line
            default = None if default is None else ",".join(str(v) for v in default)
            ann: Any = Annotated[str | None, typer.Option(help=help_text + " (comma-separated)")]
        else:
            numeric = tp in (int, float)
            option = typer.Option(help=help_text, min=s.min if numeric else None, max=s.max if numeric else None)
            ann = Annotated[tp | None if optional else tp, option]
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
    return out


def from_cli(cls: Any, values: dict[str, Any], **fixed: Any) -> Any:
    """Build ``cls`` from the CLI's values for :func:`cli_parameters` (comma-separated tuples parsed here)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = dict(fixed)
    for f, _ in _declared(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        tp, _ = _unwrap(hints[f.name])
        if typing.get_origin(tp) is tuple and isinstance(v, str):
            item = typing.get_args(tp)[0]
            parse: Callable[[str], Any] = item if item in (int, float, str) else str
            try:
                v = tuple(parse(t) for t in v.replace(" ", ",").split(",") if t.strip())
            except ValueError:
                raise InputError(f"{option_name(f.name)} takes comma-separated {item.__name__} values, got "
                                 f"{values[f.name]!r}") from None
        kwargs[f.name] = v
    return cls(**kwargs)
