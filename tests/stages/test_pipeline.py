"""Mode `pipeline` on a tiny model: generate -> quantize -> evaluate -> report, with and
without the dataset, and the resume/skip behaviour."""
import json
import os

import pytest

from configs import common
from ouromamba_jax.stages import pipeline
from ouromamba_jax.stages import runs as runs_lib

CIFAR = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data', 'cifar10')


def tiny_config(runs, data_dir):
  c = common.base_config()
  c.model = common.model_config('vim_t', img_size=32, patch_size=8, depth=2, d_model=32,
                                num_classes=10)
  c.data = common.data_config('cifar10')
  c.data.data_dir = data_dir
  c.data.use_tfds = False
  c.data.eval_batch_size = 8
  c.gen = common.gen_config()
  c.gen.update(dict(num_images=4, images_per_step=4, iterations=2, num_positives=4,
                    warmup_fraction=0.0, lr=0.1, quality_check=False))
  c.quant = common.quant_config()
  c.quant.update(dict(calib_images=8, epochs=1, micro_batch=4, report_images=2))
  c.pipeline = common.pipeline_config()
  c.pipeline.runs = runs
  c.data.eval_images = 16
  return c


def test_parse_runs_and_full_settings():
  assert runs_lib.parse_runs('ouromamba:W4A4:gen, rtn:w8a8:real') == [
      ('ouromamba', 'w4a4', 'gen'), ('rtn', 'w8a8', 'real')]
  table = runs_lib.parse_runs('table')
  assert len(table) == 21 and ('ptq4vm', 'w4a8', 'real') in table
  assert ('ouromamba', 'w4a4_alog', 'noise') in table
  assert ('ouromamba', 'w4a4_ssm8', 'gen') in table
  for bad, message in (('ouromamba:w4a4', 'method:preset:source'),
                       ('gptq:w4a4:gen', 'method must be'), ('rtn:w3a3:gen', 'preset must be'),
                       ('rtn:w4a4:web', 'source must be'), (' , ', 'empty')):
    with pytest.raises(ValueError, match=message):
      runs_lib.parse_runs(bad)
  config = tiny_config('rtn:w4a4:noise', '')
  config.pipeline.full = True
  full = pipeline.effective_config(config)
  assert full.gen.num_images == 128 and full.gen.iterations == 1000
  assert full.quant.calib_images == 128 and full.quant.epochs == 10
  assert full.data.eval_images == 0
  assert full.pipeline.runs == 'rtn:w4a4:noise'          # chosen runs are kept (split a table)
  assert config.gen.num_images == 4                      # the caller's config is untouched
  config.pipeline.runs = runs_lib.DEMO_RUNS
  assert pipeline.effective_config(config).pipeline.runs == 'table'
  config.quant.calib_images, config.pipeline.keep = 32, 'quant.calib_images, data.eval_images'
  kept = pipeline.effective_config(config)               # fields set explicitly stay as set
  assert kept.quant.calib_images == 32 and kept.data.eval_images == 16
  assert kept.quant.epochs == 10 and kept.gen.num_images == 128
  config.pipeline.keep = 'model.overrides.depth,seed'  # nested and top-level fields are fine
  pipeline.effective_config(config)
  config.pipeline.keep = 'quant.calib_imgs'
  with pytest.raises(ValueError, match="pipeline.keep names 'quant.calib_imgs'"):
    pipeline.effective_config(config)


def test_pipeline_without_data_runs_what_needs_none(tmp_path):
  config = tiny_config('rtn:w8a8:gen,ptq4vm:w4a8:real', str(tmp_path / 'nowhere'))
  config.quant.report_images = 0
  messages = []
  result = pipeline.run(config, str(tmp_path / 'wd'), log=messages.append)
  text = '\n'.join(messages)
  assert 'NO cifar10 DATA' in text and 'evaluation SKIPPED' in text
  assert 'ptq4vm_w4a8_real: SKIPPED' in text
  assert result['fp'] is None
  wd = tmp_path / 'wd'
  assert (wd / 'gen' / 'synthetic.npz').exists()
  assert (wd / 'quant' / 'rtn_w8a8_gen' / 'quantized' / 'quant_meta.json').exists()
  with open(wd / 'reports' / 'accuracy.json') as f:
    doc = json.load(f)
  assert [r['name'] for r in doc['runs']] == ['rtn_w8a8_gen'] and doc['fp'] is None
  assert 'evaluation skipped' in (wd / 'reports' / 'accuracy.md').read_text()
  # A rerun with other Gen settings must not reuse the images already in the workdir.
  config.gen.iterations = 3
  with pytest.raises(ValueError, match='different settings.*gen.iterations'):
    pipeline.run(config, str(wd), log=messages.append)


@pytest.mark.skipif(not os.path.isfile(os.path.join(CIFAR, 'test.tar.gz')),
                    reason='CIFAR-10 archives not present')
def test_pipeline_with_data_evaluates_and_resumes(tmp_path):
  config = tiny_config('rtn:w8a8:real,rtn:w8a8:noise', CIFAR)
  config.quant.report_images = 0
  workdir = str(tmp_path)
  result = pipeline.run(config, workdir, log=lambda _: None)
  assert result['fp']['images'] == 16 and 0 <= result['fp']['top1'] <= 1
  assert [r['name'] for r in result['runs']] == ['rtn_w8a8_real', 'rtn_w8a8_noise']
  for r in result['runs']:
    assert 0 <= r['top1'] <= 1 and r['eval_images'] == 16 and r['calib_images'] == 8
  md = (tmp_path / 'reports' / 'accuracy.md').read_text()
  assert '| RTN (real) |' in md and '| RTN (noise) |' in md
  messages = []
  again = pipeline.run(config, workdir, log=messages.append)
  text = '\n'.join(messages)
  assert text.count('skipping calibration') == 2 and text.count('evaluate: cached') == 3
  assert [r['top1'] for r in again['runs']] == [r['top1'] for r in result['runs']]


def test_demo_runs_match_the_config_default():
  from configs import common  # pylint: disable=g-import-not-at-top
  assert common.pipeline_config().runs == runs_lib.DEMO_RUNS
