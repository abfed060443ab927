"""The command line: mode dispatch, locked configs, the shipped config files, `convert` end to end."""
import json
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


# The data-free pipeline from configs/vim_t.py, shrunk through overrides (one OuroMamba run of
# the demo's two, no reconstruction epochs, no layer reports) to cost mostly its compiles.
TINY_VIM_T = ('--config.model.overrides.img_size=32', '--config.model.overrides.patch_size=8',
              '--config.model.overrides.depth=2', '--config.model.overrides.d_model=32',
              '--config.model.overrides.num_classes=10')
TINY_RUN = ('--config.gen.num_images=2', '--config.gen.images_per_step=2',
            '--config.gen.iterations=2', '--config.gen.num_positives=4',
            '--config.quant.calib_images=2', '--config.quant.epochs=0',
            '--config.quant.micro_batch=2', '--config.quant.report_images=0',
            '--config.pipeline.runs=ouromamba:w4a4:gen',
            "--config.data.smoke_dir=", '--config.data.use_tfds=False',
            "--config.compilation_cache=")


def _one_error_line(proc, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _mtimes(root):
  return {str(p): p.stat().st_mtime_ns for p in pathlib.Path(root).rglob('*') if p.is_file()}


def test_data_free_pipeline_on_a_hustvl_checkpoint_and_its_rerun(tmp_path):
  from ouromamba_jax import build_model  # pylint: disable=g-import-not-at-top
  from ouromamba_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.io import hustvl_keys  # pylint: disable=g-import-not-at-top
  from tests.io import synthetic_pth  # pylint: disable=g-import-not-at-top
  model = build_model('vim_t', img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10)
  pth = tmp_path / 'vim_t_midclstok_76p1acc.pth'
  state = hustvl_keys.state_dict_from_params(checkpoints.random_params(model, seed=1))
  synthetic_pth.write_state_dict(pth, {k: np.asarray(v) for k, v in state.items()})
  workdir = tmp_path / 'wd'
  args = ('--config=configs/vim_t.py', f'--workdir={workdir}', *TINY_VIM_T, *TINY_RUN)
  proc = _main(*args, f'--config.model.checkpoint={pth}', timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / 'quant' / 'ouromamba_w4a4_gen' / 'quantized' / 'quant_meta.json').is_file()
  assert (workdir / 'gen' / 'quality.json').is_file()
  report = (workdir / 'reports' / 'accuracy.md').read_text()
  assert 'evaluation skipped' in report and '--config.data.data_dir' in report
  with open(workdir / 'gen' / 'run.json') as f:
    assert json.load(f)['gen']['images_per_step'] == 2          # as used
  # A rerun of the finished workdir only reads, and removes what killed writers left.
  before = _mtimes(workdir)
  stale = [workdir / 'gen' / 'groups' / '.group_0000.npz.k3j_9xq2.tmp',
           workdir / 'gen' / 'checkpoints' / '4.orbax-checkpoint-tmp-1234']
  stale[0].write_bytes(b'half a zip')
  stale[1].mkdir(parents=True)
  again = _main(*args, f'--config.model.checkpoint={pth}', timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _mtimes(workdir) == before
  assert not any(p.exists() for p in stale)
  assert f'removed {stale[0]}: left by a writer killed mid-write' in again.stderr
  # Without a checkpoint: one line naming the download and the flag.
  _one_error_line(_main(*args), 'vim_t_midclstok_76p1acc.pth', '--config.model.checkpoint=')


def test_config_errors_are_one_line():
  _one_error_line(_main('--config=configs/vim_t.py', '--config.model.chekpoint=x.pth'),
                  'model.chekpoint', 'did you mean model.checkpoint?')
  _one_error_line(_main('--config=configs/vim_t.py', '--config.bogus=1'), 'config field bogus')
  _one_error_line(_main('--config=configs/vim_t_cifar10.py', '--config.quant.preset=w3'),
                  'quant.preset', "'w3'", 'w4a4_alog')
  _one_error_line(_main('--config=configs/vim_t_cifar10.py', '--config.gen.num_images=many'),
                  'gen.num_images')


def test_an_unusable_checkpoint_file_is_one_line(tmp_path):
  """A .pth for another variant ends the command in a one-line error, no traceback; a corrupt one
  and one with pickled code raise the same family of error (`io.integrity.UnusableFileError`,
  what main turns into that line), checked in-process to spare two more CLI start-ups."""
  from ouromamba_jax.io import families, integrity  # pylint: disable=g-import-not-at-top
  from tests.io import synthetic_pth as sp  # pylint: disable=g-import-not-at-top
  other_variant = torch_fixtures.FIXTURES / 'vim_depth2_img224.pth'
  proc = _main('--config=configs/vim_t.py', '--config.mode=convert', f'--workdir={tmp_path}',
               f'--config.convert.input={other_variant}')
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert proc.returncode == main.RUN_ERROR_EXIT and 'Traceback' not in proc.stderr, proc.stderr
  assert len(errors) == 1 and str(other_variant) in errors[0], proc.stderr
  assert 'does not match' in errors[0], proc.stderr
  corrupt, unsafe = tmp_path / 'corrupt.pth', tmp_path / 'unsafe.pth'
  corrupt.write_bytes(b'not a checkpoint')
  sp.write_zip(unsafe, sp.pickle_bytes(sp.call('os', 'system', sp.text('true'))), {})
  for path, needle in ((corrupt, 'nor a legacy PyTorch checkpoint'),
                       (unsafe, 'refusing to load global os.system')):
    with pytest.raises(integrity.UnusableFileError, match=needle):
      families.read_state_dict(path)


def test_help_lists_modes_and_documented_fields():
  from ouromamba_jax.gen.spec import GenSpec  # pylint: disable=g-import-not-at-top
  proc = _main('--config=configs/vim_t.py', '--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  for mode in main.MODES:
    assert f'\n  {mode} ' in proc.stdout
  assert "model.checkpoint = ''" in proc.stdout and 'gen.num_images = 8' in proc.stdout
  assert GenSpec.__dataclass_fields__['num_positives'].metadata['help'] in proc.stdout
  only = _main('--config=configs/vim_t.py', '--config.mode=evaluate', '--help')
  assert 'eval.quantized_checkpoint' in only.stdout and 'gen.num_images' not in only.stdout


def test_command_line_fields_are_kept_by_pipeline_full():
  # config_flags.get_override_values gives {dotted name: value}; parsing absl flags in this
  # process would change absl's logging level for the tests that follow, so the dict is given.
  config = vim_t_cifar10.get_config()
  config.pipeline.keep = 'quant.epochs'
  main.keep_command_line_fields(config, {'pipeline.full': True, 'quant.calib_images': 32})
  assert config.pipeline.keep == 'quant.epochs,pipeline.full,quant.calib_images'
