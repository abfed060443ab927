"""Site discovery and rule matching (first applicable rule wins; unused rules reported)."""
import pytest

from ouromamba_jax.models import blockwise
from ouromamba_jax.quant import config
from ouromamba_jax.quant import presets
from ouromamba_jax.quant import rules


# True: what the GPU's measured rule picks for small batches (the mixer vmaps its directions and
# calls x_proj/dt_proj as pure functions); the search must still see every Linear.
@pytest.mark.parametrize('batch_directions', [None, True])
def test_sites_follow_the_model(tiny, batch_directions):
  model, params, images = tiny
  sites = rules.find_sites(model.clone(batch_directions=batch_directions), params, images[:1])
  paths = [s.path for s in sites]
  for i in range(2):
    for linear in ('in_proj', 'x_proj', 'x_proj_b', 'dt_proj', 'dt_proj_b', 'out_proj'):
      assert f'layers_{i}/mixer/{linear}/kernel' in paths
      assert f'layers_{i}/mixer/{linear}/input_quantizer' in paths
    for name, layout in rules.ssm_site_names():
      site = sites[paths.index(f'layers_{i}/mixer/{name}')]
      assert site.kind == 'ssm' and site.layout == layout
      assert blockwise.piece_of(model, site.path) == i     # calibrated with its block
  assert 'head/kernel' in paths and 'patch_embed/proj/kernel' not in paths
  assert len(paths) == 2 * (12 + 10) + 2


def test_first_match_wins_and_unused_rules_are_reported(tiny):
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  w4, w8 = config.WeightSpec(4), config.WeightSpec(8)
  act = config.ActSpec(bits=8)
  spec_rules = [
      config.QuantRule(r'layers_1/.*', None),                      # keep block 1 in float
      config.QuantRule(r'layers_\d+/mixer/in_proj/kernel', w8),    # wins over the next rule
      config.QuantRule(r'layers_\d+/mixer/.*/kernel', w4),
      config.QuantRule(r'layers_\d+/mixer/.*_quantizer', act),     # acts (kind must match)
      config.QuantRule(r'layers_\d+/mixer/in_proj/kernel', w4),    # shadowed: never decides
      config.QuantRule(r'nothing/here', w4),
  ]
  match = rules.match_rules(sites, spec_rules)
  assert match.plan['layers_0/mixer/in_proj/kernel'] == w8
  assert match.plan['layers_0/mixer/out_proj/kernel'] == w4
  assert match.plan['layers_0/mixer/delta_b_quantizer'] == act
  assert match.plan['layers_0/mixer/in_proj/input_quantizer'] == act
  assert not any(p.startswith('layers_1/') for p in match.plan)
  assert 'layers_1/mixer/in_proj/kernel' in match.kept_float
  assert 'head/kernel' in match.kept_float
  assert match.unused_rules == [(4, r'layers_\d+/mixer/in_proj/kernel'), (5, 'nothing/here')]
  report = match.report(sites)
  assert report['quantized']['layers_0/mixer/A_quantizer'].endswith('[per tensor]')
  assert report['unused_rules'][1] == {'index': 5, 'pattern': 'nothing/here'}


def test_presets_cover_every_mixer_site(tiny):
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  match = rules.match_rules(sites, presets.preset('w4a4').rules)
  assert match.unused_rules == []
  assert sorted(match.kept_float) == ['head/input_quantizer', 'head/kernel']
