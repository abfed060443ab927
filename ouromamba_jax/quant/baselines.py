"""Baselines in the same harness: they only change the plan (and switch smoothing on).

- 'rtn': round-to-nearest with static min-max scales (weights per channel, activations per
  step), no outlier channels, no reconstruction.
- 'ptq4vm': PTQ4VM-style: per-token static *asymmetric* Linear inputs without outliers,
  learnable SmoothQuant smoothing s_c = act_max^a / w_max^(1-a) (a = 0.5) trained jointly with
  the step sizes by the block-wise loop; SSM tensors stay in float (PTQ4VM does not quantize
  them). Its official recipe uses 100 epochs and lr_s 1e-2; the epochs come from CalibSpec.
- 'ouromamba': the plan as written.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from ouromamba_jax.quant.config import METHODS, ActSpec, CalibSpec, WeightSpec
from ouromamba_jax.quant.rules import Site


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'unknown quantization method {method!r}; choose one of {METHODS}.')


def adapt_plan(plan: Mapping[str, Any], sites: Sequence[Site], method: str) -> dict[str, Any]:
  """The plan the given method actually uses."""
  check_method(method)
  kinds = {s.path: s.kind for s in sites}
  out = {}
  for path, spec in plan.items():
    kind = kinds[path]
    if method == 'rtn':
      if isinstance(spec, WeightSpec):
        spec = dataclasses.replace(spec, init='minmax')
      else:
        spec = dataclasses.replace(spec, init='minmax', outliers='none')
    elif method == 'ptq4vm':
      if kind == 'ssm':
        continue
      if isinstance(spec, ActSpec):
        spec = dataclasses.replace(spec, symmetric=False, outliers='none')
    out[path] = spec
  return out


def adapt_calib(calib: CalibSpec, method: str) -> CalibSpec:
  check_method(method)
  return dataclasses.replace(calib, epochs=0) if method == 'rtn' else calib


def uses_smoothing(method: str) -> bool:
  return method == 'ptq4vm'
