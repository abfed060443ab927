"""Helpers of the per-model quantization tests (VMamba, MambaVision) on tiny random configs."""
import dataclasses

import jax.numpy as jnp

from ouromamba_jax import quant
from ouromamba_jax.quant import config, presets


def rel_err(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def quantize(tiny, preset, method='ouromamba', mode='fake', epochs=0):
  """A preset with a coarse clipping search (8 candidates, not 100) and, unless asked, no
  reconstruction training (epochs=0): a test's cost is the compilations and lp searches, not
  what it checks. tiny: (model, params, images)."""
  model, params, images = tiny
  coarse = presets.preset_sites(preset).map(lambda s: dataclasses.replace(s, n_grid=8))
  calib = config.CalibSpec(epochs=epochs, micro_batch=4)
  return quant.quantize(model, params, images, config.QuantSpec(preset, coarse.rules(), calib),
                        method=method, mode=mode, log=lambda _: None)
