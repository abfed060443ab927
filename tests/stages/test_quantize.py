"""Mode `quantize` end to end on a tiny model, and its config door."""
import json
import os

import jax
import numpy as np
import pytest

from configs import common
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.stages import gen_outputs as outputs
from ouromamba_jax.stages import quantize as quant_run
from ouromamba_jax.stages import sections
from tests.interpreted import CPU_FAST_COMPILE
from tests.quant import coarse
from tests.quant.conftest import rtn_run, tiny  # pylint: disable=unused-import
from tests.test_quantized_checkpoints import damage, largest_array_file


def tiny_config(**quant_overrides):
  c = common.base_config()
  c.mode = 'quantize'
  c.model = common.model_config('vim_t', img_size=32, patch_size=8, depth=2, d_model=32,
                                num_classes=10)
  c.model.scan_implementation = 'sequential'
  c.data = common.data_config('cifar10')
  c.quant = common.quant_config()
  c.quant.update(dict(calib_source='noise', calib_images=8, epochs=1, micro_batch=4,
                      report_images=4, preset='w4a4'))
  c.quant.update(quant_overrides)
  return c


@pytest.mark.parametrize('overrides,message', [
    (dict(outlier_bits=17), 'outlier_bits must be an integer between 2 and 16'),
    (dict(outlier_bits=1), 'outlier_bits must be an integer between 2 and 16'),
    (dict(k=0.0), 'k .* must be a number > 0'),
    (dict(k=-1.0), 'k .* must be a number > 0'),
    (dict(delta_k=0.0), 'k .* must be a number > 0'),
    (dict(n_refresh=0), r'n_refresh .* must be an int >= 1'),
    (dict(calib_source='imagenet'), 'calib_source must be one of'),
    (dict(calib_images=0), 'calib_images must be an int >= 1'),
    (dict(method='gptq'), 'unknown quantization method'),
    (dict(preset='w2a2'), 'unknown quantization preset'),
    (dict(mode='float'), 'quant.mode must be one of'),
])
def test_bad_quant_config_rejected_before_any_work(overrides, message, tmp_path):
  config = tiny_config(**overrides)
  with pytest.raises(ValueError, match=message):
    quant_run.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)          # nothing was written


def test_weight_bits_outside_range_rejected(tmp_path):
  config = tiny_config(weight_bits=1)
  with pytest.raises(ValueError, match='WeightSpec.bits must be an integer between 2 and 16'):
    quant_run.run(config, str(tmp_path))


def test_misspelled_quant_field_is_one_line_with_a_suggestion(tmp_path):
  config = tiny_config()
  with config.quant.unlocked():
    config.quant.n_refesh = 3
  with pytest.raises(ValueError, match=r'unknown config field quant.n_refesh; did you mean '
                                       r'quant.n_refresh\?'):
    quant_run.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_quantize_mode_end_to_end_saves_reloads_reports_and_skips(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path)
  with coarse.fast_compiled_calibration():     # the calibrations compiled at XLA level 0 on CPU
    result = quant_run.quantize_run(config, workdir, log=lambda _: None)
  directory = os.path.join(workdir, 'quant', 'ouromamba_w4a4_noise')
  assert result['directory'] == directory and not result['skipped']
  for name in ('quant_report.json', 'settings.json', 'layers.json', 'layers.md',
               'outliers.json', 'outliers.png', 'losses.png', 'quantized/quant_meta.json'):
    assert os.path.exists(os.path.join(directory, name)), name
  assert not [n for n in os.listdir(directory) if n.startswith('.tmp')]
  with open(os.path.join(directory, 'quant_report.json')) as f:
    report = json.load(f)
  assert report['calibration_images'] == 8 and len(report['blocks']) == 2

  # The saved checkpoint reloads with the logits of the calibrated tree.
  model, _ = sections.load_model(config.model)
  spec = quant_run.run_spec(config.quant)
  images = quant_run.calibration_images(spec, config, workdir, model)
  assert images.shape == (8, 32, 32, 3)
  loaded, _ = quantized_checkpoints.load_quantized(result['checkpoint'], model)
  # one program for both trees, compiled at XLA level 0 on CPU (3.3 -> ~2 s)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x), compiler_options=CPU_FAST_COMPILE)
  np.testing.assert_array_equal(np.asarray(apply(loaded, images)),
                                np.asarray(apply(result['qparams'], images)))

  # mode `quantize` on the same workdir skips the finished run.
  config.quant.report_images = 0
  again = quant_run.run(config, workdir)
  assert again['skipped'] and 'qparams' not in again

  # Changed settings: recalibrates instead of reusing (or refusing) the old outputs.
  config.quant.epochs = 0
  messages = []
  with coarse.fast_compiled_calibration():
    changed = quant_run.quantize_run(config, workdir, log=messages.append)
  assert not changed['skipped'] and any('settings changed' in m for m in messages)
  with open(os.path.join(directory, 'quant_report.json')) as f:
    assert all(b['steps'] == 0 for b in json.load(f)['blocks'])


@pytest.mark.parametrize('how,keep_snapshot', [('flip', True), ('truncate', False)])
def test_a_damaged_finished_run_is_detected_named_and_redone(tmp_path, how, keep_snapshot):
  config = tiny_config(report_images=0, method='rtn', epochs=0, calib_images=4)
  workdir = str(tmp_path)
  model, params = sections.load_model(config.model)
  run = lambda log: quant_run.quantize_run(config, workdir, model=model, params=params, log=log)
  first = run(lambda _: None)
  images = quant_run.calibration_images(quant_run.run_spec(config.quant), config, workdir, model)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  want = np.asarray(apply(first['qparams'], images))
  damage(largest_array_file(first['checkpoint']), how)
  if not keep_snapshot:
    os.remove(os.path.join(first['directory'], quant_run.SNAPSHOT_FILE))
  messages = []
  again = run(messages.append)
  assert not again['skipped']
  damaged = [m for m in messages if 'is damaged' in m]
  assert len(damaged) == 1 and 'quantized' in damaged[0] and 'redoing the run' in damaged[0]
  assert any('resuming' in m for m in messages) == keep_snapshot   # replayed, not recalibrated
  loaded, _ = quantized_checkpoints.load_quantized(again['checkpoint'], model)
  np.testing.assert_array_equal(np.asarray(apply(loaded, images)), want)
  assert run(lambda _: None)['skipped']


def test_gen_source_reads_the_synthetic_set(tmp_path):
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  outputs.write_synthetic_set(outputs.gen_dir(workdir),
                              rng.standard_normal((3, 32, 32, 3)).astype(np.float32),
                              np.arange(3), (0.5,) * 3, (0.25,) * 3)
  config = tiny_config(calib_source='gen', calib_images=8)
  model = sections.model_from_config(config.model)
  spec = quant_run.run_spec(config.quant)
  messages = []
  images = quant_run.calibration_images(spec, config, workdir, model, log=messages.append)
  assert images.shape == (3, 32, 32, 3) and any('fewer than' in m for m in messages)
  with pytest.raises(FileNotFoundError, match='run --config.mode=generate first'):
    quant_run.calibration_images(spec, config, str(tmp_path / 'empty'), model)


def test_noise_source_is_seeded():
  config = tiny_config(noise_std=0.5)
  model = sections.model_from_config(config.model)
  spec = quant_run.run_spec(config.quant)
  a = quant_run.calibration_images(spec, config, '', model)
  b = quant_run.calibration_images(spec, config, '', model)
  np.testing.assert_array_equal(a, b)
  assert 0.4 < a.std() < 0.6


def test_unset_quant_fields_do_not_change_a_runs_settings():
  old = {'model': {'depth': 2}, 'quant': {'preset': 'w4a4', 'k': None}, 'images_sha256': 'x'}
  assert quant_run.same_settings(old, {**old, 'quant': {'preset': 'w4a4', 'a_domain': None}})
  assert not quant_run.same_settings(old, {**old, 'quant': {'preset': 'w4a4', 'a_domain': 'log'}})
  assert not quant_run.same_settings(old, {**old, 'images_sha256': 'y'})
  assert not quant_run.same_settings(None, old)


def test_calibration_time_counts_each_block_once_and_names_the_restored_part():
  report = {'blocks': [{'seconds': 5.0, 'restored': True}, {'seconds': 3.0, 'restored': False},
                       {'seconds': 2.0}], 'seconds': 9.0}
  assert quant_run.calibration_seconds(report) == (10.0, 5.0)


def test_calib_augment_crops_and_flips_the_batch_once_seeded():
  config = tiny_config(calib_augment=True)
  model = sections.model_from_config(config.model)
  spec = quant_run.run_spec(config.quant)
  plain = quant_run.calibration_images(quant_run.run_spec(tiny_config().quant), config, '', model)
  a = quant_run.calibration_images(spec, config, '', model)
  assert a.shape == plain.shape and a.dtype == np.float32 and not np.allclose(a, plain)
  np.testing.assert_array_equal(a, quant_run.calibration_images(spec, config, '', model))
