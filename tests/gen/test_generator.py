"""The generation loop in memory: shapes, balanced targets, falling loss, seeds, clear errors."""
import dataclasses

import numpy as np
import pytest

from ouromamba_jax.gen import generator
from tests.gen.conftest import tiny_gen_spec


@pytest.fixture(scope='module')
def run(tiny):
  model, params = tiny
  return generator.generate(model, params, tiny_gen_spec())


def test_images_labels_and_history(run):
  assert run.images.shape == (4, 32, 32, 3) and run.images.dtype == np.float32
  assert run.labels.shape == (4,) and len(set(run.labels.tolist())) == 4
  assert [h['indices'] for h in run.history] == [[0, 1], [2, 3]]
  for group in run.history:
    assert len(group['total']) == 6 and group['total'][-1] < group['total'][0]


def test_seed_decides_the_images(tiny, run):
  model, params = tiny
  spec = tiny_gen_spec(num_images=2)   # one group: the step program `run` compiled
  a = generator.generate(model, params, spec, seed=0)
  np.testing.assert_array_equal(a.images, generator.generate(model, params, spec, seed=0).images)
  assert not np.allclose(a.images, generator.generate(model, params, spec, seed=1).images)


def test_description_names_what_defines_the_images(tiny):
  model, params = tiny
  spec = tiny_gen_spec()
  desc = generator.run_description(model, params, spec, seed=3)
  assert desc['seed'] == 3 and desc['gen']['lr'] == spec.lr and 'log_every' not in desc['gen']
  other = generator.run_description(model, params, dataclasses.replace(spec, log_every=7), 3)
  assert other == desc  # operational fields may change on resume


def test_missing_normalisation_is_a_clear_error(tiny):
  with pytest.raises(ValueError, match='one value per input channel'):
    generator.generate(*tiny, tiny_gen_spec(mean=(), std=()))


class _RecordingStore:
  """A GroupStore that only notes whether a run description was written."""

  def __init__(self):
    self.begun = False

  def begin(self, description):
    del description
    self.begun = True


@pytest.mark.parametrize('change,message', [
    (dict(lr=0.0), 'gen.lr must be > 0'),
    (dict(schedule='linear'), 'gen.schedule must be one of'),
    (dict(warmup_fraction=1.5), r'gen.warmup_fraction must be in \[0, 1\]'),
    (dict(jitter=-1), 'gen.jitter must be >= 0'),
])
def test_bad_pixel_settings_fail_before_the_run_is_recorded(tiny, change, message):
  """A run.json written for a bad value would refuse the corrected settings as another run."""
  spec = tiny_gen_spec(**change)
  with pytest.raises(ValueError, match=message):
    generator.check_spec(spec, tiny[0])              # what preflight runs
  store = _RecordingStore()
  with pytest.raises(ValueError, match=message):
    generator.generate(*tiny, spec, store=store)
  assert not store.begun
