"""bench/ssm_bits_ablation.py: the widened plan (the runs themselves need the testbed data)."""
import re

import pytest

from ouromamba_jax.quant import presets
from tests.bench import load_bench


def _first_match(spec, path):
  return next(r.spec for r in spec.rules if re.fullmatch(r.pattern, path))


def test_widened_group_takes_the_new_bits_and_nothing_else_changes():
  bench = load_bench('ssm_bits_ablation')
  base = presets.preset('w4a4')
  spec = bench.widened_spec(base, 'AD', 8)
  assert spec.rules[1:] == base.rules and spec.name == 'w4a4_AD8'
  for site in ('A', 'A_b', 'D', 'D_b'):
    widened = _first_match(spec, f'layers_3/mixer/{site}_quantizer')
    assert widened.bits == 8 and widened.symmetric
  for site in ('B', 'C_b', 'delta', 'in_proj/input_quantizer'):
    path = f'layers_3/mixer/{site}' + ('' if '/' in site else '_quantizer')
    assert _first_match(spec, path) == _first_match(base, path)
  delta = _first_match(bench.widened_spec(base, 'delta', 8), 'layers_0/mixer/delta_b_quantizer')
  assert delta.bits == 8 and not delta.symmetric and delta.k == 4.0


def test_unknown_group_is_rejected():
  with pytest.raises(SystemExit):
    load_bench('ssm_bits_ablation').main(['--gen=x.npz', '--groups=A,E', '--out=/tmp/never.json'])


def test_base_spec_is_w4a4_with_the_config_calibration_settings():
  from configs import vim_t_cifar10
  cfg = vim_t_cifar10.get_config()
  spec = load_bench('ssm_bits_ablation').base_spec(cfg.quant, epochs=3)
  assert spec.calib.epochs == 3 and spec.calib.micro_batch == cfg.quant.micro_batch
  assert [r.spec for r in spec.rules] == [r.spec for r in presets.preset('w4a4').rules]
