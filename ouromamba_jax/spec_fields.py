"""Documented dataclass fields: the one place a spec's defaults and their meanings live.

Every spec (GenSpec, QuantRunSpec, EvalSpec, TrainSpec) declares its fields with `field`, so
`configs/common.py` can build its ConfigDict sections from them and a `--help` can print them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


def field(default: Any, help: str, *, type: Optional[type] = None):  # pylint: disable=redefined-builtin
  """A frozen-dataclass field with its documentation. `type` is the value type of a field
  whose default is None (None = "the preset's / the dataset's value"), for config placeholders."""
  return dataclasses.field(default=default, metadata={'help': help, 'type': type})
