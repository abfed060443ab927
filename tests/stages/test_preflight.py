"""stages.preflight: every config error before any work, named in one line (here: the ones
that used to surface only after a stage had started or written something)."""
import pytest

from configs import vim_t_cifar10
from ouromamba_jax.stages import NEEDS_WEIGHTS, preflight


def _config(mode, **model):
  config = vim_t_cifar10.get_config()
  config.mode = mode
  for name, value in model.items():
    config.model[name] = value
  return config


@pytest.mark.parametrize('mode', ['pipeline', 'generate', 'quantize', 'evaluate', 'train'])
def test_random_weights_are_a_checkpoint_only_for_convert(mode):
  with pytest.raises(preflight.ConfigError,
                     match=rf"model.checkpoint='random' is read by mode convert only, not {mode}: "
                           r'write random-init weights first with --config.mode=convert '
                           r'--config.convert.input=random \(-> WORKDIR/vim_t_cifar10_random'
                           r'.safetensors\), then pass that file as --config.model.checkpoint'):
    preflight.check(_config(mode, checkpoint='random'))
  preflight.check(_config('convert', checkpoint='random'))


def test_weightless_modes_still_name_the_download():
  assert 'quantize' in NEEDS_WEIGHTS
  with pytest.raises(preflight.ConfigError, match='has no checkpoint'):
    preflight.check(_config('quantize', checkpoint=''))


def test_bad_gen_optimiser_settings_fail_at_the_door():
  """Before Gen writes its run.json (which would then refuse the corrected settings)."""
  config = _config('generate')
  config.gen.lr = -0.2
  with pytest.raises(ValueError, match='gen.lr must be > 0, got -0.2'):
    preflight.check(config)
