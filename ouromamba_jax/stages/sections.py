"""Config sections at the door of a stage: a ConfigDict section becomes a typed spec or model once.

Unknown fields are refused with one line naming the field and the closest known one, so a
misspelling never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, TypeVar

from ouromamba_jax import checkpoints
from ouromamba_jax.models import build_model

SpecT = TypeVar('SpecT')


def as_dict(section) -> dict[str, Any]:
  if section is None:
    return {}
  return dict(section.to_dict() if hasattr(section, 'to_dict') else section)


def check_fields(section: Mapping[str, Any], known, where: str) -> None:
  """One-line error for the first field of `section` not in `known` (with a close match)."""
  for name in section:
    if name not in known:
      close = difflib.get_close_matches(name, list(known), n=1)
      hint = f'; did you mean {where}.{close[0]}?' if close else ''
      raise ValueError(f'unknown config field {where}.{name}{hint} (known: {", ".join(known)})')


def spec_from_section(spec_cls: type[SpecT], section, where: str, **fill) -> SpecT:
  """`spec_cls` from a config section (None values keep the spec's default); `fill` sets
  fields the section leaves at their default (e.g. the dataset's normalisation)."""
  values = as_dict(section)
  known = [f.name for f in dataclasses.fields(spec_cls)]
  check_fields(values, known, where)
  values = {k: v for k, v in values.items() if v is not None}
  defaults = spec_cls()
  for name, value in fill.items():
    if values.get(name, getattr(defaults, name)) == getattr(defaults, name):
      values[name] = value
  return spec_cls(**values)


def section(config, name: str, how: str):
  """config.<name>, or a clear error saying which `common.*_config()` adds it."""
  value = config.get(name)
  if value is None:
    raise ValueError(f'the config has no `{name}` section; add `c.{name} = {how}`.')
  return value


def model_from_config(model_cfg, **extra):
  """The VisionMamba described by a `model` config section (`extra` overrides fields)."""
  if model_cfg.dtype not in checkpoints.DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(checkpoints.DTYPES)}, '
                     f'got {model_cfg.dtype!r}')
  fields = {k: v for k, v in as_dict(model_cfg.overrides).items() if v is not None}
  fields['dtype'] = checkpoints.DTYPES[model_cfg.dtype]
  for field in ('scan_implementation', 'quant_implementation'):
    if model_cfg.get(field):
      fields[field] = model_cfg[field]
  fields.update(extra)
  return build_model(model_cfg.name, **fields)


def load_params(model_cfg, model, seed: int = 0):
  """`model`'s params for a `model` section: '' = seeded random init, 'bundled' or a path."""
  if not model_cfg.checkpoint:
    return checkpoints.random_params(model, seed)
  return checkpoints.load_checkpoint(model_cfg.checkpoint, model, model_name=model_cfg.name)


def load_model(model_cfg, seed: int = 0, **extra):
  """(model, params) for a `model` section: '' = seeded random init, 'bundled' or a path."""
  model = model_from_config(model_cfg, **extra)
  return model, load_params(model_cfg, model, seed)
