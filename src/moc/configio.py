"""Generic typed-config loading: YAML files and presets, ``base:`` chains, dotted overrides, dataclasses.

Both config families use this one loader: the run config (:mod:`moc.config`: ``model``, ``memory``,
``train``, ``data``) and the experiment config of the demo application
(:mod:`moc_experiments.experiment.protocol.config`). A config is a tree of dataclasses; a nested dict (from
YAML) becomes one with :func:`build`, which checks every key and type and suggests the closest name
for a typo ("did you mean"). Overrides are ``a.b.c=value`` at any depth (values parsed as YAML)::

    d = read_spec("tiny-moc", PRESET_DIR, "config")     # preset name or YAML path -> dict
    d = resolve_base(d, lambda s: read_spec(s, PRESET_DIR, "config"))
    apply_overrides(d, ["memory.top_k=2"])
    cfg = build(RunConfig, d)

Every failure is a :class:`ConfigError` naming the key (or file and line) and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import stat
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import yaml

from moc.errors import MocError


class ConfigError(MocError, ValueError):
    """A configuration problem; the message names the key and how to fix it."""


# --------------------------------------------------------------------------------------------------
# "did you mean"
# --------------------------------------------------------------------------------------------------


def suggest(key: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``key``, or ``""`` when none is close."""
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of dataclass ``cls``, nested dataclasses expanded (``memory.top_k``, ...)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        where = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        out += field_paths(tp, where) if dataclasses.is_dataclass(tp) else [where]
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(dotted key, type name, default)`` for every key of dataclass ``cls`` (``moc config keys``)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        where = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, where)
            continue
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default
        rows.append((where, type_name(tp), default))
    return rows


def _suggest_key(cls: type, key: str, names: list[str]) -> str:
    """Nested keys of exactly that name (``top_k`` at the top of the run config suggests
    ``memory.top_k``: a missing section is the likelier slip); failing that, the closest sibling."""
    deeper = [p for p in field_paths(cls) if "." in p and p.rsplit(".", 1)[-1] == key]
    if deeper:
        return " (did you mean " + " or ".join(repr(p) for p in deeper[:3]) + "?)"
    return suggest(key, names)


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


def shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a 52 MB value pasted into a config
    must not become a 52 MB error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def type_name(tp: Any) -> str:
    """A readable name for an annotation: ``int or null``, ``one of 'a', 'b'``, ``list of str``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints widen to floats; a float
    written ``3e-4``, which YAML 1.1 reads as a string, becomes a float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_type(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {shown(value)} is not a valid {type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        near = suggest(value, [c for c in choices if isinstance(c, str)]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: {shown(value)} is not one of {', '.join(repr(a) for a in choices)}{near}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {type_name(item_tp)}, got {shown(value)}")
        return [check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}: expected a mapping, got {shown(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used in configs
        return value
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {shown(value)}")


def build(cls: type, d: Any, prefix: str = "") -> Any:
    """Dataclass ``cls`` from the nested dict ``d``: nested dataclasses are built from sub-dicts (a
    missing or null one takes its defaults), every other value is type-checked, unknown keys are errors
    with a suggestion. ``prefix`` is the dotted path of ``d`` in the whole config, for messages."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping of keys, got {shown(d)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {where}{_suggest_key(cls, str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, {} if value is None else value, where)
        else:
            kwargs[key] = check_type(value, tp, where)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# Values that cannot make sense, refused when a config loads
# --------------------------------------------------------------------------------------------------


def refuse_non_finite(obj: Any, prefix: str = "") -> None:
    """A NaN or infinite number anywhere in a config (dataclasses, mappings and lists are walked) is a
    :class:`ConfigError` naming its key: ``--set train.lr=.nan`` would otherwise train a whole run at
    loss nan and exit 0."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{prefix or 'value'} is {obj}; give a finite number")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Iterable[tuple[str, Any]] = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    elif isinstance(obj, dict):
        items = ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            refuse_non_finite(v, f"{prefix}[{i}]")
        return
    else:
        return
    for name, value in items:
        refuse_non_finite(value, f"{prefix}.{name}" if prefix else name)


def at_least(section: Any, prefix: str, keys: Iterable[str], low: float, *, strict: bool = False) -> None:
    """Each of ``keys`` of ``section`` (``None`` values skipped) must be ``>= low`` (``> low`` when
    ``strict``); otherwise a :class:`ConfigError` naming ``prefix.key`` and the bound."""
    for key in keys:
        value = getattr(section, key)
        if value is None or (value > low if strict else value >= low):
            continue
        bound = f"> {low:g}" if strict else f">= {low:g}"
        what = "positive" if strict and low == 0 else bound
        raise ConfigError(f"{prefix}.{key} must be {what}, got {value}; set {prefix}.{key} {bound}")


def within(value: float, key: str, low: float, high: float, *, high_open: bool = True) -> None:
    """``low <= value < high`` (``<= high`` unless ``high_open``), else a ConfigError naming ``key``."""
    if low <= value and (value < high if high_open else value <= high):
        return
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"{key} must be in {interval}, got {value}; set {key} inside that range")


# --------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------


def parse_yaml_value(raw: str, where: str) -> Any:
    """A ``--set`` value parsed as YAML (``8`` -> int, ``[a, b]`` -> list); empty text is ``""``."""
    if not raw.strip():
        return ""
    try:
        return safe_load_bounded(raw, where)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"{where}: the value is not valid YAML ({problem}); quote it, e.g. --set 'key=\"text\"', "
            "or write lists as [a, b]"
        ) from None


def parse_override(item: str, example: str = "memory.top_k=16") -> tuple[str, Any]:
    """``"a.b=value"`` (optionally prefixed ``--set``) -> ``("a.b", parsed value)``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value, e.g. {example}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.startswith("--set"):
        key = key[len("--set") :].strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part; write key.sub=value, e.g. {example}")
    return key, parse_yaml_value(raw, f"override {item!r}")


def set_path(d: dict[str, Any], key: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``key="a.b.c"``, creating missing (or null) mappings on the way."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section (it holds {shown(nxt)})")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(
    d: dict[str, Any], overrides: list[str] | dict[str, Any] | None, example: str = "memory.top_k=16"
) -> None:
    """Set ``a.b.c=value`` items (strings, values parsed as YAML; or a ``{key: value}`` dict) into ``d``.
    Keys are checked when the dict is built (:func:`build`), with suggestions."""
    if not overrides:
        return
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [parse_override(o, example) for o in overrides]
    for key, value in items:
        set_path(d, key, value)


# --------------------------------------------------------------------------------------------------
# Files, presets, base chains
# --------------------------------------------------------------------------------------------------


# A config is a few hundred keys: these bounds are far above any real one and stop a file that would
# hang or exhaust memory (a FIFO that never ends, an "alias bomb" whose references expand to billions
# of values when dumped or merged, nesting deeper than the parser's recursion).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 64
MAX_CONFIG_VALUES = 100_000


def check_yaml_size(data: Any, where: str) -> Any:
    """Return ``data`` after walking it once, counting every value reached (an alias counts each time
    it is reached, as a dump or a merge would copy it); too deep or too many is a ConfigError."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        obj, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{where} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases that repeat "
                "each other?); write the values out, without &anchors and *aliases"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{where} nests deeper than {MAX_CONFIG_DEPTH} levels; a config is a few levels deep"
            )
        if isinstance(obj, dict):
            stack += [(v, depth + 1) for v in obj.values()]
        elif isinstance(obj, list):
            stack += [(v, depth + 1) for v in obj]
    return data


def _too_deep(where: str) -> ConfigError:
    return ConfigError(
        f"{where} nests deeper than {MAX_CONFIG_DEPTH} levels; a config is a few levels deep, write it flat"
    )


def safe_load_bounded(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with :func:`check_yaml_size`; nesting deep enough to exhaust the
    parser's recursion is the same ConfigError (YAML errors are left to the caller)."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise _too_deep(where) from None
    return check_yaml_size(data, where)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file, turning every way it can fail (missing, a folder, a FIFO or device, too big,
    unreadable, not UTF-8, malformed, an alias bomb, nested too deep) into a :class:`ConfigError` that
    names the file, the line and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; pass a YAML file (or a preset name)")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO would wait forever; /dev/null reads as empty
        raise ConfigError(f"{what} {path} is not a regular file (a FIFO or device); pass a YAML file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what} {path} is {info.st_size:,} bytes, more than a config's {MAX_CONFIG_BYTES:,}; "
            "pass the YAML config, not a data file"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (bad byte at offset {e.start}); pass a YAML file saved as "
            "UTF-8 (a binary file? convert other encodings with iconv -t utf-8)"
        ) from None
    try:
        return safe_load_bounded(text, f"{what} {path}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"{what} {path} is not valid YAML{at}: {problem}") from None


def presets_in(preset_dir: Path) -> list[str]:
    """The preset names in a folder of ``NAME.yaml`` files."""
    return sorted(p.stem for p in preset_dir.glob("*.yaml"))


def read_spec(spec: str, preset_dir: Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file (a path ending .yaml/.yml, or any existing path) or in the preset
    ``preset_dir/spec.yaml``; ``name`` defaults to the file's stem or the preset name."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        data, name = read_yaml(path, f"{what} file"), path.stem
        if data is None:  # an empty file would silently give every default (a 148M-parameter model)
            raise ConfigError(
                f"{what} file {path} is empty; write the keys it sets (e.g. `base: PRESET` and what "
                "differs), or pass a preset name"
            )
    else:
        preset = preset_dir / f"{spec}.yaml"
        if not preset.is_file():
            names = presets_in(preset_dir)
            raise ConfigError(
                f"no {what} preset or file named {spec!r}{suggest(spec, names)}; presets: {', '.join(names)}"
            )
        data, name = read_yaml(preset, f"{what} preset"), spec
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {spec} must hold a mapping of keys, not {type(data).__name__}")
    data.setdefault("name", name)
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, merging nested mappings key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_base(
    d: dict[str, Any],
    read: Callable[[str], dict[str, Any]],
    what: str = "config",
    seen: set[str] | None = None,
    *,
    parent_key: str = "base",
    replace: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Follow ``base: NAME_OR_PATH`` chains (read with ``read``), merging each child over its parent.

    ``parent_key`` names the key that points at the parent (for configs where ``base`` is a field);
    keys in ``replace`` that a child sets replace the parent's value whole instead of merging into it.
    """
    seen = set() if seen is None else seen
    base = d.pop(parent_key, None)
    if base is None:
        return d
    if base in seen:
        raise ConfigError(f"{what} '{parent_key}' chain loops at {base!r}")
    seen.add(base)
    parent = resolve_base(read(str(base)), read, what, seen, parent_key=parent_key, replace=replace)
    for key in replace:
        if key in d:
            parent.pop(key, None)
    return deep_merge(parent, d)


def load(
    cls: type,
    spec: str | Path | dict[str, Any] | Any,
    overrides: list[str] | dict[str, Any] | None,
    read: Callable[[str], dict[str, Any]],
    *,
    read_parent: Callable[[str], dict[str, Any]] | None = None,
    what: str = "config",
    example: str = "memory.top_k=16",
    parent_key: str = "base",
    replace: tuple[str, ...] = (),
) -> Any:
    """The one loading path: ``spec`` (a ``cls`` instance, a dict, or a preset name / YAML path read
    with ``read``) -> follow ``base:`` (parents read with ``read_parent``, default ``read``) -> apply
    overrides -> :func:`build` ``cls`` (whose ``__post_init__`` validates)."""
    if isinstance(spec, cls):
        d = dataclasses.asdict(spec)
    elif isinstance(spec, dict):
        d = dict(spec)
    else:
        d = read(str(spec))
    d = resolve_base(d, read_parent or read, what, parent_key=parent_key, replace=replace)
    apply_overrides(d, overrides, example)
    return build(cls, d)
