"""Spec validation, rules and the named presets."""
import dataclasses
import json

import pytest

from ouromamba_jax.quant import config
from ouromamba_jax.quant import presets


@pytest.mark.parametrize('kwargs,message', [
    (dict(bits=1), 'bits must be an integer between 2 and 16'),
    (dict(bits=17), 'bits must be an integer between 2 and 16'),
    (dict(bits=4.0), 'bits must be an integer between 2 and 16'),
    (dict(outlier_bits=32), 'outlier_bits must be an integer between 2 and 16'),
    (dict(k=0), 'k .* must be a number > 0'),
    (dict(k=-3.0), 'k .* must be a number > 0'),
    (dict(n_refresh=0), 'n_refresh .* must be an int >= 1'),
    (dict(trigger='any'), 'trigger must be one of'),
    (dict(outliers='fp16'), 'outliers must be one of'),
    (dict(std_ddof=2), 'std_ddof must be 0'),
    (dict(n_grid=0), 'n_grid'),
])
def test_bad_activation_values_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    config.ActSpec(**kwargs)


def test_bad_weight_and_calibration_values_rejected():
  with pytest.raises(ValueError, match='WeightSpec.bits'):
    config.WeightSpec(bits=0)
  with pytest.raises(ValueError, match='init must be one of'):
    config.WeightSpec(init='mse')
  with pytest.raises(ValueError, match='micro_batch'):
    config.CalibSpec(micro_batch=0)
  with pytest.raises(ValueError, match='not a valid regex'):
    config.QuantRule('layers_(', None)
  with pytest.raises(ValueError, match='spec must be a WeightSpec'):
    config.QuantRule('x', 4)


def test_presets():
  w4a4 = presets.preset('W4A4')
  weights, inputs, delta, a, ssm = (r.spec for r in w4a4.rules)
  assert a == ssm  # A has its own rule (for a_domain) but the same spec by default
  assert weights.bits == 4 and inputs.bits == 4 and inputs.outliers == 'int'
  assert inputs.outlier_bits == 8 and delta.symmetric is False and delta.k == 4.0
  assert presets.preset('w4a8').rules[1].spec.outliers == 'float'
  assert presets.preset('w4a4_no_outliers').rules[1].spec.outliers == 'none'
  assert presets.preset('w8a8').rules[0].spec.bits == 8
  float_ssm = [r.spec for r in presets.preset('w4a4_float_ssm').rules]
  assert float_ssm[0].bits == 4 and float_ssm[1].outliers == 'int'
  assert float_ssm[2:] == [None, None, None]  # Δ, A and B, C, D stay in float
  with pytest.raises(ValueError, match='asymmetric'):
    config.ActSpec(domain='log')
  with pytest.raises(ValueError, match='domain'):
    config.ActSpec(domain='exp', symmetric=False)
  w, x, d, _, ssm8 = (r.spec for r in presets.preset('w4a4_ssm8').rules)
  assert (w.bits, x.bits, d.bits, ssm8.bits) == (4, 4, 8, 8)  # Linears 4-bit, SSM tensors 8-bit
  assert d.symmetric is False and d.k == 4.0 and ssm8.symmetric and ssm8.outliers == 'int'
  _, _, d, a, ssm = (r.spec for r in presets.preset('w4a4_alog').rules)
  assert (a.domain, a.symmetric, a.bits) == ('log', False, 4) and ssm.domain == 'linear'
  assert d.domain == 'linear'
  with pytest.raises(ValueError, match='unknown quantization preset'):
    presets.preset('w2a2')
  spec = presets.preset('w4a4')
  recorded = json.loads(json.dumps(spec.to_json()))    # the report's record of the spec
  assert recorded['name'] == spec.name and recorded['calib'] == dataclasses.asdict(spec.calib)
  rebuilt = [(r['pattern'], r['spec'] and getattr(config, r['spec'].pop('type'))(**r['spec']))
             for r in recorded['rules']]
  assert rebuilt == [(r.pattern, r.spec) for r in spec.rules]   # every rule, every field


def test_rule_kinds():
  weight_rule = config.QuantRule(r'layers_\d+/mixer/in_proj/kernel', config.WeightSpec())
  skip = config.QuantRule(r'layers_0/.*', None)
  assert weight_rule.applies_to('layers_3/mixer/in_proj/kernel', 'weight')
  assert not weight_rule.applies_to('layers_3/mixer/in_proj/kernel', 'act')
  assert not weight_rule.applies_to('layers_3/mixer/in_proj/kernel_x', 'weight')  # fullmatch
  assert skip.applies_to('layers_0/mixer/D_quantizer', 'act')
