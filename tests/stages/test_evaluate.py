"""Mode `evaluate`: weights named and found, eval.json, quantized checkpoints, no data."""
import json
import os

import numpy as np
import pytest

from configs import common
from ouromamba_jax import quant
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.data import pipeline
from ouromamba_jax.io import export_safetensors
from ouromamba_jax.stages import evaluate
from tests.test_evaluation import N, TINY, _data_cfg, _hand, dataset, tiny  # pylint: disable=unused-import


def _config(data_dir, **model_fields):
  c = common.base_config()
  c.mode = 'evaluate'
  c.model = common.model_config('vim_t', **TINY)
  c.model.update(model_fields)
  c.data = _data_cfg(data_dir)
  c.eval = common.eval_config()
  return c


def test_run_writes_eval_json(tiny, dataset, tmp_path):
  root, files, labels = dataset
  config = _config(root)
  with pytest.raises(ValueError, match=r'vim_t_midclstok_76p1acc.pth.*--config.model.checkpoint='):
    evaluate.run(config, str(tmp_path))
  config.model.checkpoint = str(tmp_path / 'ckpt' / 'tiny.safetensors')
  export_safetensors(tiny[1], config.model.checkpoint)
  record = evaluate.run(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'eval.json') as f:
    assert json.load(f) == record
  assert record['images'] == N and record['weights'] == config.model.checkpoint
  assert (record['top1'], record['top5']) == pytest.approx(_hand(*tiny, files, labels))
  assert os.listdir(tmp_path / 'work') == ['eval.json']                # no temp files left


def test_run_without_data_says_where_to_put_it(tmp_path):
  (tmp_path / 'empty').mkdir()
  config = _config(tmp_path / 'empty', checkpoint='')
  config.eval.allow_random_init = True
  with pytest.raises(pipeline.DataNotFoundError, match=r'--config.data.data_dir='):
    evaluate.run(config, str(tmp_path))


@pytest.mark.slow  # quantizing even this tiny model takes ~15 s on 2 CPU cores
def test_quantized_checkpoint(tiny, dataset, tmp_path):
  model, params = tiny
  root, files, labels = dataset
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  qparams, _ = quant.quantize(model, params, images,
                              quant.QuantRunSpec(preset='w8a8', micro_batch=4).quant_spec(),
                              method='rtn', log=lambda _: None)
  quantized_checkpoints.save_quantized(str(tmp_path / 'quantized'), qparams, model)
  config = _config(root)
  config.eval.quantized_checkpoint = str(tmp_path / 'quantized')
  record = evaluate.run(config, str(tmp_path / 'work'))
  loaded, _ = quantized_checkpoints.load_quantized(str(tmp_path / 'quantized'), model)
  assert (record['top1'], record['top5']) == pytest.approx(_hand(model, loaded, files, labels))
  assert record['weights'].startswith('quantized ')
  config.eval.quantized_checkpoint = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match='is not a folder.*WORKDIR/quant/<run>/quantized'):
    evaluate.run(config, str(tmp_path / 'work'))


def test_a_quantize_runs_folder_stands_for_its_checkpoint_and_others_are_refused(tmp_path):
  run = tmp_path / 'quant' / 'ouromamba_w4a4_gen'
  (run / 'quantized').mkdir(parents=True)
  (run / 'quantized' / quantized_checkpoints.META_FILE).write_text('{}')
  for given in (run, run / 'quantized'):
    assert evaluate.quantized_folder(str(given)) == str(run / 'quantized')
  with pytest.raises(FileNotFoundError, match='is not a folder.*WORKDIR/quant/<run>/quantized'):
    evaluate.quantized_folder(str(tmp_path / 'nope'))
  with pytest.raises(FileNotFoundError, match='holds no quant_meta.json'):
    evaluate.quantized_folder(str(tmp_path / 'quant'))


def test_smoke_sample_stands_in_for_missing_data_and_says_so(dataset, tmp_path):
  root, _, labels = dataset
  cfg = _data_cfg(tmp_path / 'no_imagenet', smoke_dir=str(root), eval_images=5)
  messages = []
  source, smoke = evaluate.open_source(cfg, TINY['img_size'], messages.append)
  assert smoke and len(source.labels) == len(labels)
  assert 'SMOKE CHECK' in messages[0] and '--config.data.data_dir=' in messages[0]
  assert evaluate.open_source(_data_cfg(root), TINY['img_size'], messages.append)[1] is False
  with pytest.raises(pipeline.DataNotFoundError):
    evaluate.open_source(_data_cfg(tmp_path / 'none'), TINY['img_size'])   # no smoke_dir
  assert '--config.data.eval_images=0 evaluates all' in evaluate.describe_count(source, 5)
  assert evaluate.describe_count(source, 0) == f'all {len(labels)} images'
