"""OuroMamba-Quant: quantizers, rules, quantized param types, the pass and calibration.

Entry points: `quantize(model, params, images, spec, method=...)` (or `quantize_from_config`),
`save_quantized`, `load_quantized`, presets via `make_preset` / `spec_from_config`.
"""
from ouromamba_jax.quant.api import (load_quantized, quantize, quantize_from_config,
                                     save_quantized)
from ouromamba_jax.quant.config import (ActSpec, CalibSpec, PRESETS, QuantRule, QuantSpec,
                                        WeightSpec, default_config, make_preset,
                                        spec_from_config)
from ouromamba_jax.quant.rewrite import set_mode

__all__ = ['ActSpec', 'CalibSpec', 'PRESETS', 'QuantRule', 'QuantSpec', 'WeightSpec',
           'default_config', 'load_quantized', 'make_preset', 'quantize', 'quantize_from_config',
           'save_quantized', 'set_mode', 'spec_from_config']
