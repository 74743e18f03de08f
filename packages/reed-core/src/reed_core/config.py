"""Typed configs: frozen dataclasses, named presets, a TOML/YAML file and ``a.b=value`` overrides.

Resolution order: preset (a Python function returning a config) -> file -> command-line overrides.
Every key is checked against the dataclass fields and converted to the field's type; an unknown
key or a value of the wrong type raises :class:`ConfigError` naming the dotted field path. The
resolved config is written into every run folder (:func:`save_config`) and reloads to an equal
object (:func:`load_config_file`).

A config class may list keys it no longer has in a class attribute ``RENAMED: ClassVar[dict[str,
str]]`` (old key -> its new dotted key, or ``""`` where it was removed): a file, override or saved
run config that still uses one gets "objective.targets was renamed reed.targets".
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class RenamedKeyError(ConfigError):
    """A key that a config class lists in ``RENAMED``: it was renamed or removed (e.g. a run
    config saved by an older version)."""


def config_to_dict(cfg: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a (nested) dataclass config."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # try exact-type members first so "3" stays a str for int | str only if int fails
        for member in [a for a in args if a is not type(None)]:
            try:
                return _convert(value, member, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {', '.join(map(_type_name, args))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, path)
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from plain data, checking keys and types; errors name the field."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"{path}." if path else ""
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    moved = [key for key in sorted(data) if key in renamed and key not in fields]
    if moved:
        raise RenamedKeyError(
            "; ".join(
                f"{where}{key} was renamed {renamed[key]}" if renamed[key] else f"{where}{key} was removed"
                for key in moved
            )
        )
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key for {cls.__name__}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        field_path = f"{path}.{name}" if path else name
        kwargs[name] = _convert(value, hints[name], field_path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(_locate(str(err), path, fields)) from err


def _locate(message: str, path: str, fields: Mapping[str, Any]) -> str:
    """``message`` of a config class's own check, placed at ``path``: a message that starts with one
    of the class's fields (``depth: ...``) or with the section's own name (``train.steps: ...`` at
    ``train``) gets the full dotted key; any other is prefixed with ``path``."""
    if not path:
        return message
    head = re.split(r"[.:\[ =/]", message, maxsplit=1)[0]
    parent, _, section = path.rpartition(".")
    if head == section:
        return f"{parent}.{message}" if parent else message
    if head in fields:
        return f"{path}.{message}"
    return f"{path}: {message}"


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """Plain data of a ``.toml``, ``.yaml``/``.yml`` or ``.json`` config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config: file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"--config: {path} must end in .toml, .yaml, .yml or .json")
    except (yaml.YAMLError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"--config: cannot parse {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a table of settings at the top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(
    cls: type[T],
    presets: Mapping[str, Callable[[], T]] | None = None,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Resolve preset -> file -> overrides into a validated ``cls`` instance."""
    presets = presets or {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"--preset: unknown {preset!r}; choose one of {', '.join(presets)}")
        data = config_to_dict(presets[preset]())
    else:
        data = config_to_dict(cls())
    if file is not None:
        data = _deep_merge(data, read_config_file(file))
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            # a missing table is created: config_from_dict then names an unknown or renamed key,
            # or builds a new entry of a table field (e.g. one more alignment target)
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys[: depth + 1])}: not a table (cannot set {'.'.join(keys)})")
        node[keys[-1]] = value
    return config_from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def load_config_file(cls: type[T], path: str | Path) -> T:
    return config_from_dict(cls, read_config_file(path))


def add_config_args(parser: argparse.ArgumentParser, presets: Mapping[str, Any]) -> None:
    parser.add_argument("--preset", choices=sorted(presets), default=None, help="named preset to start from")
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="TOML or YAML file of settings applied over the preset"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied last, e.g. train.lr=1e-4"
    )


def config_from_args(cls: type[T], presets: Mapping[str, Callable[[], T]], args: argparse.Namespace) -> T:
    """Resolve ``--preset``/``--config``/overrides; a bad config exits with status 2 and one
    ``error:`` line naming the key (:func:`reed_core.cli.exit_with_error`)."""
    from reed_core.cli import exit_with_error

    try:
        cfg = load_config(cls, presets, args.preset, args.config, args.overrides)
    except ConfigError as err:
        exit_with_error(err)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        sys.exit(0)
    return cfg
