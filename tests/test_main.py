"""The command line: mode dispatch, locked configs, the shipped config files, `convert` end to end."""
import os
import pathlib
import subprocess
import sys

from absl import app
import numpy as np
import pytest

import main
from configs import vim_b
from configs import vim_s
from configs import vim_t
from configs import vim_t_cifar10
from ouromamba_jax.io import read_state_dict
from ouromamba_jax.io import safetensors_io
from tests.fixtures import torch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_mode():
  with pytest.raises(app.UsageError, match=r"unknown mode 'bogus'.*--config.mode=NAME"):
    main.resolve_mode('bogus')
  assert main.resolve_mode('convert').__module__ == 'ouromamba_jax.stages.convert'
  assert main.resolve_mode('evaluate').__module__ == 'ouromamba_jax.stages.evaluate'
  proc = _main('--config=configs/vim_t.py', '--config.mode=bogus')
  assert proc.returncode != 0 and "unknown mode 'bogus'" in proc.stderr


def test_locked_config_rejects_unknown_field():
  proc = _main('--config=configs/vim_t.py', '--config.model.chekpoint=x.pth')
  assert proc.returncode != 0 and 'chekpoint' in proc.stderr


def test_config_files():
  for module, name in ((vim_t, 'vim_t'), (vim_s, 'vim_s'), (vim_b, 'vim_b')):
    c = module.get_config()
    assert c.model.name == name and c.data.name == 'imagenet' and c.model.checkpoint == ''
    assert c.eval.quantized_checkpoint == '' and c.convert.input == ''
    assert f'{name}_midclstok_' in module.__doc__ and '--config.model.checkpoint=' in module.__doc__
  c = vim_t_cifar10.get_config()
  assert c.eval.quantized_checkpoint == '' and c.data.name == 'cifar10'


def test_convert_mode_round_trip(tmp_path):
  pth = torch_fixtures.FIXTURES / 'vim_depth2_img224.pth'
  out = tmp_path / 'converted.safetensors'
  proc = _main('--config=configs/vim_t.py', '--config.mode=convert', f'--workdir={tmp_path}',
               '--config.model.overrides.depth=2', '--config.model.overrides.d_model=32',
               '--config.model.overrides.num_classes=10', f'--config.convert.input={pth}',
               f'--config.convert.output={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  source, converted = read_state_dict(pth), safetensors_io.read_safetensors(out)
  assert sorted(source) == sorted(converted)
  for key, value in source.items():
    np.testing.assert_array_equal(converted[key], value, err_msg=key)


def test_compilation_cache_is_enabled_in_the_given_directory(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_compilation_cache_dir
  try:
    main.enable_compilation_cache('')                     # '' = off: nothing changes
    assert jax.config.jax_compilation_cache_dir == before
    main.enable_compilation_cache(str(tmp_path / 'xla'))
    assert (tmp_path / 'xla').is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'xla')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
