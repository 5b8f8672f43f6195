"""Typed run configuration: dataclasses per concern, strict YAML loading, dotted overrides.

A run config is a YAML file whose keys mirror the dataclasses below. Unknown keys are errors,
values are type-checked, and command-line overrides use dotted paths::

    cfg = load_config("configs/train/tiny_cpu.yaml", ["optim.lr=3e-4", "data.max_batch_seconds=40"])

The resolved config (`to_dict(cfg)`) is saved with every run and checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the dataclasses."""


def require(ok: bool, key: str, value: Any, wanted: str) -> None:
    """For a dataclass's `__post_init__`: a ConfigError naming the key, the value received and what it takes."""
    if not ok:
        raise ConfigError(f"{key} is {value!r}; set it to {wanted}")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Builds dataclass `cls` from a nested dict, rejecting unknown keys and wrong types.

    Args:
        cls: the dataclass type to build.
        data: nested plain data (as loaded from YAML); missing keys keep their defaults.
        path: dotted prefix used in error messages.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}{where}; valid keys are: {', '.join(sorted(names))}"
        )
    kwargs = {key: _coerce(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain nested data of a config dataclass, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` overrides to nested plain data; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=3e-4")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key} is a value, not a section")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({_yaml_problem(e)}); quote strings "
                              "and close brackets, e.g. model.architecture.conv_dim=[32,32]") from e
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Loads YAML file `path` (or only defaults when None) into `cls`, then applies overrides.

    A file may start from another: `extends: other.yaml` (relative to the file's folder) loads that one
    first (itself maybe extending a third), and the file's own keys replace the other's, section by section.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass one of configs/train/*.yaml")
        data = _read_extended(path, ())
    return from_dict(cls, apply_overrides(data, list(overrides or [])))


EXTENDS = "extends"  # the key naming the config file a file starts from


def _read_extended(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The mapping of YAML file `path` merged over the file it extends (recursively); `chain`: the files
    that extend it, to refuse a circle."""
    data = _read_mapping(path)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"config file {path}: {EXTENDS} must name another config file, e.g. "
                          f"{EXTENDS}: base_natural_stage6.yaml, got {parent!r}")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise ConfigError(f"config file {path} extends {parent_path}, which does not exist; the path is relative to "
                          f"{path.parent}")
    chain = (*chain, path.resolve())
    if parent_path.resolve() in chain:
        circle = " -> ".join(str(p.name) for p in (*chain, parent_path))
        raise ConfigError(f"config file {path} extends itself ({circle}); remove one {EXTENDS}")
    return _merged(_read_extended(parent_path, chain), data)


def _read_mapping(path: Path) -> dict[str, Any]:
    """YAML file `path` as a mapping of sections (`yaml.safe_load`: no code runs)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(e)}); fix it there") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, optim:, ...), "
                          f"got a {type(data).__name__}")
    return data


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`base` with `own`'s keys put over it: mappings merged key by key, any other value (lists too) replaced."""
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def field_reasons(cls: type) -> dict[str, str]:
    """Each field's reason, read from the dataclass's source: the comment ending the field's line, else the
    comment lines right above it (`lr: float = 1e-4  # peak learning rate after warmup` -> "peak learning rate
    after warmup"). A field without either maps to ""."""
    return dict(_field_reasons(cls))


@functools.cache
def _field_reasons(cls: type) -> tuple[tuple[str, str], ...]:
    """field_reasons, cached per class (reading the source is slow)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line -> its comment's text
    code_lines: set[int] = set()  # lines holding code (a comment alone on its line is not)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    reasons = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        reason = comments.get(node.end_lineno, "")
        line = node.lineno - 1
        above = []
        while not reason and line in comments and line not in code_lines:  # a comment block right above the field
            above.insert(0, comments[line])
            line -= 1
        reasons[node.target.id] = reason or " ".join(above)
    return tuple((f.name, reasons.get(f.name, "")) for f in dataclasses.fields(cls))


def annotated_yaml(cfg: Any, defaults: Any = None) -> str:
    """The config as YAML, every key with its reason as a comment (`field_reasons`), a section's with its docstring.

    Args:
        cfg: a config dataclass instance (e.g. a loaded TrainConfig).
        defaults: the same class's defaults; a value that differs from its default then says the default too.
    """
    lines: list[str] = []
    _annotate(cfg, defaults, 0, lines)
    return "\n".join(lines) + "\n"


def _annotate(cfg: Any, defaults: Any, depth: int, lines: list[str]) -> None:
    """Appends the lines of one config section (recursively) to `lines`."""
    indent = "  " * depth
    reasons = field_reasons(type(cfg))
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name, None) if defaults is not None else None
        reason = reasons[f.name]
        if dataclasses.is_dataclass(value):
            reason = reason or type(value).__doc__.strip().splitlines()[0]
            lines.append(f"{indent}{f.name}:  # {reason}")
            _annotate(value, default if dataclasses.is_dataclass(default) else None, depth + 1, lines)
            continue
        text = _flow(value)
        if defaults is not None and to_dict(value) != to_dict(default):
            reason = f"(default {_flow(default)}) {reason}"
        lines.append(f"{indent}{f.name}: {text}  # {reason}")


def _flow(value: Any) -> str:
    """A value as one line of YAML."""
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6, allow_unicode=True).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What the YAML parser found and where, in one line."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _join(path: str, key: str) -> str:
    """Dotted path for error messages."""
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Checks `value` against type hint `tp`, converting where it is lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{path} must be one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__}: {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}: {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `3e-4` as a string; accept it as the float it obviously is.
        try:
            return float(value)
        except ValueError as e:
            raise ConfigError(f"{path} must be float, got str: {value!r}") from e
    if isinstance(tp, type):
        if tp is not bool and isinstance(value, bool):
            raise ConfigError(f"{path} must be {tp.__name__}, got a boolean {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"{path} must be {tp.__name__}, got {type(value).__name__}: {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")  # a programming error in the dataclasses


__all__ = ["ConfigError", "annotated_yaml", "apply_overrides", "field_reasons", "from_dict", "load_config", "require",
           "save_config", "to_dict"]
