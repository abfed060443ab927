"""Gen sets shared between workdirs: one key per Gen setting and seed, made once under a lock,
copied without Orbax checkpoints; a workdir with its own Gen folder resumes that instead."""
import os

from configs import vim_t_cifar10
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages import shared_gen


def _config(runs='ouromamba:w4a4:gen'):
  config = vim_t_cifar10.get_config()
  config.model.checkpoint = 'bundled'
  config.pipeline.runs = runs
  return config


def _fake_generate(made):
  def generate(cfg, workdir):
    directory = gen_outputs.gen_dir(workdir)
    if not os.path.isfile(gen_outputs.synthetic_path(workdir)):
      made.append(workdir)
      os.makedirs(os.path.join(directory, 'checkpoints'), exist_ok=True)
      with open(gen_outputs.synthetic_path(workdir), 'w') as f:
        f.write(f'seed {cfg.seed}')
  return generate


def test_key_follows_gen_seed_and_model_not_the_quantizer():
  base = _config()
  key = shared_gen.gen_key(base)
  other_k = _config()
  other_k.quant.k = 5.0
  assert shared_gen.gen_key(other_k) == key
  for change in (lambda c: setattr(c.gen, 'neighbourhood', 7), lambda c: setattr(c, 'seed', 1),
                 lambda c: setattr(c.model, 'checkpoint', 'other.pth')):
    changed = _config()
    change(changed)
    assert shared_gen.gen_key(changed) != key


def test_needs_gen_only_for_runs_calibrated_on_gen():
  assert shared_gen.needs_gen(_config('rtn:w4a4:noise,ouromamba:w4a4:gen'))
  assert not shared_gen.needs_gen(_config('rtn:w4a4:noise,ptq4vm:w4a4:real'))


def test_made_once_then_copied_without_checkpoints(tmp_path):
  made, logs, store = [], [], str(tmp_path / 'store')
  for cell in ('a', 'b'):
    assert shared_gen.prepare(_config(), str(tmp_path / cell), store, _fake_generate(made),
                              logs.append)
  assert len(made) == 1 and 'making' in logs[0] and 'reusing' in logs[1]
  for cell in ('a', 'b'):
    assert open(gen_outputs.synthetic_path(str(tmp_path / cell))).read() == 'seed 0'
    assert not os.path.exists(os.path.join(gen_outputs.gen_dir(str(tmp_path / cell)),
                                           'checkpoints'))
  assert not any(name.endswith('.copying') for name in os.listdir(tmp_path / 'a'))


def test_a_workdir_with_its_own_gen_folder_or_no_gen_run_is_left_alone(tmp_path):
  own = tmp_path / 'cell'
  (own / 'gen').mkdir(parents=True)
  store = str(tmp_path / 'store')
  assert not shared_gen.prepare(_config(), str(own), store, _fake_generate([]), print)
  assert not shared_gen.prepare(_config('rtn:w4a4:noise'), str(tmp_path / 'x'), store,
                                _fake_generate([]), print)
  assert not os.path.exists(store)
