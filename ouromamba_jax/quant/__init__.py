"""OuroMamba-Quant: quantizers, rules, quantized param types, the pass and calibration.

Entry points: `quantize(model, params, images, spec, method=...)`, presets by name
(`presets.preset`, `presets.PRESETS`), a config's run as `run_spec.QuantRunSpec`; saving and
loading are `ouromamba_jax.quantized_checkpoints`. Imported lazily (the specs are light, the
pass pulls in JAX).
"""
import importlib

_EXPORTS = {
    'quantize': 'api', 'to_integer': 'api', 'set_mode': 'rewrite',
    'ActSpec': 'config', 'CalibSpec': 'config', 'QuantRule': 'config', 'QuantSpec': 'config',
    'WeightSpec': 'config', 'PRESETS': 'presets', 'preset': 'presets', 'VimSites': 'presets',
    'QuantRunSpec': 'run_spec', 'fold_parameter_sites': 'fold',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
