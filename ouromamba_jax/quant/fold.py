"""Parameter-only activation sites folded into constants for inference.

A and D are quantized like activations (a per-tensor static step with the outlier recurrence,
`ActQuantizer` with layout 'tensor'), but their inputs are parameters: A = -exp(A_log), D. A
forward would quantize the same tensors again on every call; measured on one H200 (Vim-B,
BENCHMARKS.md session 18) that is 0.43 ms of a 6.5 ms batch-1 forward and 0.56 ms at batch 64.
`fold_parameter_sites` evaluates each such site once and stores its value as a `FoldedSite`.

  folded = quant.fold_parameter_sites(quant.to_integer(qparams))
  logits = model.apply({'params': folded}, images)     # the same logits, bit for bit

The site's input is found beside its quantizer in the same module (hustvl/Vim `A_log` /
`A_b_log` and `D` / `D_b`, VMamba `A_logs` / `Ds`, MambaVision `A_log` / `D`) and formed with
the models' own functions (`layers.state_matrix`, `layers.skip_vector`). The folded tree is
for inference: keep the unfolded one for calibration, saving and reports.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax

from ouromamba_jax.models import layers
from ouromamba_jax.quant import qtypes

# quantizer name pattern -> (candidate names of its input parameter, the input's formula)
PARAMETER_SITES: tuple[tuple[str, tuple[str, ...], Callable], ...] = (
    (r'A(?P<suffix>_b)?_quantizer', ('A{suffix}_log', 'A_logs'), layers.state_matrix),
    (r'D(?P<suffix>_b)?_quantizer', ('D{suffix}', 'Ds'), layers.skip_vector),
)


def _site_input(module: dict, name: str):
  """(index into PARAMETER_SITES, input parameter) of the parameter site `name` in `module`,
  or None when `name` is no parameter site."""
  for index, (pattern, candidates, _) in enumerate(PARAMETER_SITES):
    match = re.fullmatch(pattern, name)
    if not match:
      continue
    names = [c.format(suffix=match['suffix'] or '') for c in candidates]
    for candidate in names:
      if candidate in module:
        return index, module[candidate]
    raise ValueError(f'parameter site {name!r} has no input parameter beside it (looked for '
                     f'{names}); is this the quantized tree of a supported model?')
  return None


# The quantizer on its formed input, jitted as the model's forward runs it (same bits).
_site_value = jax.jit(
    lambda quantizer, source, index: quantizer(PARAMETER_SITES[index][2](source)),
    static_argnums=2)


def fold_parameter_sites(qparams: Any) -> Any:
  """`qparams` with every A/D site quantizer replaced by a `FoldedSite` holding its value (in
  the quantizer's mode: fold the integer tree for the integer forward). Other leaves are kept
  as they are (shared, not copied); a tree without such sites comes back unchanged."""

  def walk(node):
    if not isinstance(node, dict):
      return node
    out = {}
    for name, value in node.items():
      found = _site_input(node, name) if isinstance(value, qtypes.ActQuantizer) else None
      if found is None:
        out[name] = walk(value)
      else:
        out[name] = qtypes.FoldedSite(_site_value(value, found[1], found[0]), mode=value.mode)
    return out

  return walk(qparams)
