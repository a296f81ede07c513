"""Reading and writing configs: YAML with duplicate keys named by line, key=value overrides, the environment's
settings folded in (:mod:`.settings`), one validation whose errors name key, value and allowed values."""

from __future__ import annotations

import copy
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from im_pipeline.config.base import ConfigError
from im_pipeline.config.experiment import ExperimentConfig
from im_pipeline.config.settings import data_dir_origin, fold_settings
from im_pipeline.evaluation.specs import OptionsError


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model whose keys hold ``loc``'s last part (``("training", "lr")`` → TrainingConfig), by walking
    the annotations: list indices and mapping keys step into the item type, ``X | None`` into ``X``."""
    node: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return None
            node = field.annotation
        else:  # a list index or a mapping key: the item's type
            args = typing.get_args(node)
            node = args[-1] if args else None
        while typing.get_origin(node) in (typing.Union, types.UnionType):
            node = next((a for a in typing.get_args(node) if a is not type(None)), None)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _unknown_key_line(loc: tuple[Any, ...], value: Any, overrides: dict[str, str]) -> str:
    key = ".".join(str(p) for p in loc)
    model = _model_at(loc)
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    origin = next((f" (from --set {item})" for k, item in overrides.items() if k == key or k.startswith(key + ".")), "")
    return f"  {key}: unknown key{origin} (value {value!r}){hint} (every key: `im-pipeline keys`)"


def _options_origin(error: OptionsError, overrides: dict[str, str]) -> str:
    """`` (from --set ITEM)`` when a ``--set`` wrote one of a benchmark's unknown options (the whole ``options``
    mapping, or one option), else empty."""
    if not error.unknown:
        return ""
    base = f"evaluation.{error.benchmark}"
    keys = {"evaluation", base, f"{base}.options", *(f"{base}.options.{u}" for u in error.unknown)}
    return next((f" (from --set {item})" for k, item in overrides.items() if k in keys), "")


def _format_validation_error(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line per error: key, value and allowed values; an unknown key gets its closest known keys (difflib) and,
    when a ``--set`` override wrote it, that override."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key_line(tuple(e["loc"]), e["input"], overrides or {}))
            continue
        allowed = ""
        ctx = e.get("ctx") or {}
        if isinstance(ctx.get("error"), OptionsError):  # a benchmark's options: its own message, at its own key
            error = ctx["error"]
            origin = _options_origin(error, overrides or {})
            lines.append(f"  evaluation.{error.benchmark}.options: {error}{origin}")
            continue
        if "expected" in ctx:
            allowed = f"; allowed: {ctx['expected']}"
        shown = e.get("input")
        value = "" if isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"  {key}: {msg}{value}{allowed}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key repeated in one mapping is an error (YAML itself says keys are unique;
    PyYAML silently keeps the last one)."""


class _DuplicateKey(yaml.YAMLError):
    pass


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` → (["a","b","0","c"], parsed YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} is not an index into a list of {len(node)}")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {last!r} is not an index into a list of {len(node)}")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: parent of {last!r} is a value, not a section")
    return data


def config_from_dict(
    data: dict[str, Any],
    source: str = "<dict>",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Validate a config mapping once, with the environment's settings folded in (``data_dir``: ``--data-dir``).

    A data directory that is set (by the config, ``data_dir`` or the environment) but missing is an error naming
    where it came from. ``overrides``: the ``--set`` items already applied to ``data``, named in the error when one
    of them wrote an unknown key.
    A mapping that is already resolved (e.g. ``ExperimentConfig.to_dict()``) stays as it is.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    folded = fold_settings(data, data_dir)
    if isinstance(folded.get("data_dir"), str) and not Path(folded["data_dir"]).is_dir():
        where = data_dir_origin(data, data_dir)
        raise ConfigError(f"data directory {folded['data_dir']} (from {where}) does not exist")
    try:
        return ExperimentConfig.model_validate(folded)
    except ValidationError as err:
        by_key = {item.split("=", 1)[0].strip(): item for item in overrides or []}
        raise ConfigError(_format_validation_error(err, source, by_key)) from None


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> ExperimentConfig:
    """Load an experiment YAML, apply ``key=value`` overrides, fold in the settings (``data_dir``: ``--data-dir``,
    used when the config names none), validate once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path), data_dir=data_dir, overrides=overrides)


def write_resolved_config(cfg: ExperimentConfig, run_dir: Path, **extra: Any) -> Path:
    """Write ``config.yaml``: the resolved config (its settings included), its hash, plus e.g. the arm and seed of
    a launched run (``_``-prefixed keys, which a reader drops)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.yaml"
    payload = cfg.to_dict()
    payload["_config_hash"] = cfg.config_hash()
    payload.update({f"_{k}": v for k, v in extra.items()})
    from im_pipeline.provenance import write_text_atomic

    write_text_atomic(out, yaml.safe_dump(payload, sort_keys=False, allow_unicode=True))
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
