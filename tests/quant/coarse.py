"""Helpers of the per-model quantization tests (VMamba, MambaVision) on tiny random configs."""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from ouromamba_jax import quant
from ouromamba_jax.quant import config, presets
from tests.interpreted import CPU_FAST_COMPILE


def rel_err(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def quantize(tiny, preset, method='ouromamba', mode='fake', epochs=0):
  """A preset with a coarse clipping search (8 candidates, not 100) and, unless asked, no
  reconstruction training (epochs=0), compiled at XLA's level 0 on CPU
  (`fast_compiled_calibration`): a test's cost is the compilations and lp searches, not what it
  checks. tiny: (model, params, images)."""
  model, params, images = tiny
  coarse = presets.preset_sites(preset).map(lambda s: dataclasses.replace(s, n_grid=8))
  calib = config.CalibSpec(epochs=epochs, micro_batch=4)
  with fast_compiled_calibration():
    return quant.quantize(model, params, images, config.QuantSpec(preset, coarse.rules(), calib),
                          method=method, mode=mode, log=lambda _: None)


_FAST_JITS = {}


def _fast_jits():
  """The calibration's jitted steps (block forward, embedding, downsample, capture, initial
  scales, weight freezing) re-jitted with CPU_FAST_COMPILE, made once per process so that
  their compilations are cached like the originals'."""
  if not _FAST_JITS:
    from ouromamba_jax.models import blockwise  # pylint: disable=g-import-not-at-top
    from ouromamba_jax.quant import calibrate  # pylint: disable=g-import-not-at-top
    from ouromamba_jax.quant import qtypes  # pylint: disable=g-import-not-at-top
    for module, name, static in ((blockwise, 'run_block', 0), (blockwise, 'embed', 0),
                                 (blockwise, 'run_after', 0), (calibrate, '_capture_run', (0, 1)),
                                 (calibrate, '_init_layer', (0, 1, 2, 3)),
                                 (calibrate, '_train_step', (0, 1, 2)), (qtypes, '_freeze', 1)):
      original = getattr(module, name)
      _FAST_JITS[(module, name)] = jax.jit(original.__wrapped__, static_argnums=static,
                                           compiler_options=CPU_FAST_COMPILE)
  return _FAST_JITS


@contextlib.contextmanager
def fast_compiled_calibration():
  """Within: `quant.quantize` runs its jitted steps compiled at XLA's optimisation level 0 on
  CPU (tests.interpreted.CPU_FAST_COMPILE). The same code and math; on CPU its compiles are
  most of a tiny model's calibration (a tiny VMamba's W8A8 + W4A4: 38 -> 28 s), and the values
  differ at most in the last ulps. Elsewhere (GPU) a no-op."""
  if CPU_FAST_COMPILE is None:
    yield
    return
  with pytest.MonkeyPatch.context() as patch:
    for (module, name), fast in _fast_jits().items():
      patch.setattr(module, name, fast)
    yield
