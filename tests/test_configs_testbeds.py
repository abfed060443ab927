"""configs/{vmamba,mambavision}_t_cifar10.py: the testbed builds from the config with its bundled
weights; with the checkpoint emptied, the pipeline stops in one line naming the flag."""
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.models.vmamba import VMamba
from ouromamba_jax.stages import sections

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTBEDS = {'vmamba_t_cifar10': VMamba, 'mambavision_t_cifar10': MambaVision}


@pytest.mark.parametrize('name', sorted(TESTBEDS))
def test_config_builds_the_bundled_testbed(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model = sections.model_from_config(config.model)
  assert isinstance(model, TESTBEDS[name]) and model.img_size == 32 and model.num_classes == 10
  assert config.model.checkpoint == 'bundled'
  assert config.data.name == 'cifar10' and config.train.epochs > 0


@pytest.mark.parametrize('name', sorted(TESTBEDS))
def test_missing_checkpoint_is_one_line(name):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'), f'--config=configs/{name}.py',
                         '--config.model.checkpoint='], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
  assert f"model '{name}' has no checkpoint" in lines[0]
  assert '--config.model.checkpoint=' in lines[0]
