"""EvalSpec: which weights mode `evaluate` scores (the `eval` config section, typed)."""
from __future__ import annotations

import dataclasses

from ouromamba_jax.quant.config import MODES
from ouromamba_jax.spec_fields import field

QUANTIZED_MODES = ('',) + MODES


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Mode `evaluate` (top-1/top-5 on config.data's evaluation split, written to eval.json)."""
  quantized_checkpoint: str = field(
      '', "a save_quantized folder (WORKDIR/quant/<run>/quantized, or the run's folder); "
      "'' = the FP model")
  quantized_mode: str = field('', "'' = as saved | fake | int (same logits; int runs integer dots)")
  allow_random_init: bool = field(
      False, "model.checkpoint '' evaluates random weights only when True")

  def __post_init__(self):
    if self.quantized_mode not in QUANTIZED_MODES:
      raise ValueError(f'eval.quantized_mode must be one of {QUANTIZED_MODES}, '
                       f'got {self.quantized_mode!r}.')
