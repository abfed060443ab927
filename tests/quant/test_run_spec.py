"""QuantRunSpec: one schema for a run's fields; overrides reach exactly their site groups."""
import dataclasses
import os
import subprocess
import sys

import pytest

from ouromamba_jax.quant import config
from ouromamba_jax.quant import presets
from ouromamba_jax.quant.run_spec import QuantRunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _specs(**fields):
  return [r.spec for r in QuantRunSpec(**fields).quant_spec().rules]


def test_defaults_are_the_presets_and_calib_specs():
  spec = QuantRunSpec().quant_spec()
  assert spec.rules == presets.preset('w4a4').rules and spec.calib == config.CalibSpec()
  assert QuantRunSpec().name == 'ouromamba_w4a4_gen'
  assert QuantRunSpec(run_name='x').name == 'x'


def test_overrides_reach_their_groups():
  _, _, d, a, ssm = _specs(a_domain='log')
  assert (a.domain, a.symmetric, a.bits) == ('log', False, 4) and ssm.domain == 'linear'
  assert d.domain == 'linear'
  _, x, d, _, s = _specs(ssm_bits=8)
  assert (x.bits, d.bits, s.bits) == (4, 4, 8)  # ssm_bits reaches B, C, A, D only
  _, x, d, _, s = _specs(delta_bits=6)
  assert (x.bits, d.bits, s.bits, d.k) == (4, 6, 4, 4.0)
  w, x, d, _, s = _specs(n_refresh=5, trigger='batch', delta_k=5.0, weight_bits=3, k=2.0)
  assert x.n_refresh == d.n_refresh == s.n_refresh == 5 and x.trigger == 'batch'
  assert d.k == 5.0 and x.k == s.k == 2.0 and w.bits == 3
  assert _specs(preset='w4a4_alog', ssm_bits=8)[3].domain == 'log'
  assert _specs(preset='w4a4_float_ssm', k=2.0)[2:] == [None, None, None]
  w, x, d, a, s = _specs(act_bits=6, delta_bits=8)
  assert (w.bits, x.bits, d.bits, a.bits, s.bits) == (4, 6, 8, 6, 6)  # the group's own wins
  calib = QuantRunSpec(epochs=2, weight_decay=1e-4, smooth_alpha=0.3).calib()
  assert calib == config.CalibSpec(epochs=2, weight_decay=1e-4, smooth_alpha=0.3)


@pytest.mark.parametrize('fields,message', [
    (dict(n_refresh=0), 'n_refresh'),
    (dict(outlier_bits=17), 'outlier_bits must be an integer between 2 and 16'),
    (dict(weight_bits=1), 'WeightSpec.bits'),
    (dict(preset='w2a2'), 'unknown quantization preset'),
    (dict(method='gptq'), 'unknown quantization method'),
    (dict(calib_source='imagenet'), 'calib_source must be one of'),
    (dict(calib_images=0), 'calib_images must be an int >= 1'),
    (dict(mode='float'), 'quant.mode must be one of'),
    (dict(report_images=-1),
     r'^quant\.report_images must be an int >= 0 \(0 = no per-layer and outlier reports\), '
     r'got -1\.$'),
    (dict(preset='w8a8', outlier_bits=4),
     r'^ActSpec\.outlier_bits \(4\) is below the inlier bits \(8\): .*set outlier_bits >= bits\.$'),
    (dict(grad_clip=0.0), r'^CalibSpec\.grad_clip must be > 0, got 0\.0 \(0 clips every update'),
])
def test_bad_values_rejected_at_construction(fields, message):
  with pytest.raises(ValueError, match=message):
    QuantRunSpec(**fields)


def test_every_calib_field_is_in_the_schema():
  fields = {f.name for f in dataclasses.fields(QuantRunSpec)}
  assert {f.name for f in dataclasses.fields(config.CalibSpec)} <= fields


def test_outlier_bits_below_bits_only_matters_for_integer_outliers():
  assert config.ActSpec(bits=8, outliers='float', outlier_bits=4).bits == 8
  assert QuantRunSpec(preset='w4a4', outlier_bits=4).sites().inputs.outlier_bits == 4


_PARSE = """
import sys
from absl import flags
from ml_collections import config_flags
config = config_flags.DEFINE_config_file('config', None, '', lock_config=True)
flags.FLAGS(sys.argv)
print(config.value.quant.act_bits, config.value.quant.weight_bits)
"""


def test_bits_are_settable_from_the_command_line():
  out = subprocess.run([sys.executable, '-c', _PARSE, '--config=configs/vim_t_cifar10.py',
                        '--config.quant.act_bits=8', '--config.quant.weight_bits=6'],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  assert out.split() == ['8', '6']
