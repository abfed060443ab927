"""Every config error before any work: `check(config)` builds each spec the mode will use, so a
bad value, preset or missing checkpoint stops the command in one line, not minutes later."""
from __future__ import annotations

import os

from ouromamba_jax import checkpoints
from ouromamba_jax import data as data_lib
from ouromamba_jax.gen import generator
from ouromamba_jax.stages import MODE_SECTIONS, MODES, NEEDS_WEIGHTS
from ouromamba_jax.stages import convert
from ouromamba_jax.stages import sections

NOT_PATHS = (checkpoints.BUNDLED_NAME, convert.RANDOM)


class ConfigError(ValueError):
  """A config field that cannot run; the message names the field."""


def check_checkpoint(config, mode: str) -> None:
  """A mode that quantizes needs real weights: '' names the download, a missing file itself;
  'random' is a name only mode convert reads (it writes random weights to a file)."""
  path = config.model.checkpoint
  if not path and mode in NEEDS_WEIGHTS:
    raise ConfigError(checkpoints.missing_checkpoint_message(config.model.name))
  if path == convert.RANDOM and mode != 'convert':
    raise ConfigError(
        f"model.checkpoint='{convert.RANDOM}' is read by mode convert only, not {mode}: write "
        f'random-init weights first with --config.mode=convert '
        f'--config.convert.input={convert.RANDOM} (-> WORKDIR/{config.model.name}_random'
        '.safetensors), then pass that file as --config.model.checkpoint.')
  if path and path not in NOT_PATHS and not os.path.exists(os.path.expanduser(path)):
    raise ConfigError(f'model.checkpoint {path!r} does not exist. '
                      + checkpoints.missing_checkpoint_message(config.model.name))


def check_sections(config, mode: str) -> None:
  """Builds the specs of the sections `mode` reads (their own errors name the field)."""
  from ouromamba_jax.stages import evaluate, generate, quantize, runs  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.train.spec import TrainSpec  # pylint: disable=g-import-not-at-top
  wanted = MODE_SECTIONS[mode]
  for name in wanted:
    if config.get(name) is None:
      raise ConfigError(f'the config has no `{name}` section, which mode {mode} reads; add '
                        f'`c.{name} = common.{name}_config()` to the config file.')
  model = sections.model_from_config(config.model)
  if 'data' in wanted:
    data_lib.dataset_module(config.data.name)
  if 'gen' in wanted:
    generator.check_spec(generate.gen_spec(config), model)
  if 'quant' in wanted:   # in the pipeline too: its runs take every field but these three
    quantize.run_spec(config.quant)
  if mode in ('pipeline', 'study'):
    from ouromamba_jax.stages import pipeline, study  # pylint: disable=g-import-not-at-top
    configs = [config]
    if mode == 'study':  # every cell's config, as the study will run it
      spec = study.study_named(str(config.study.name))
      study.parse_part(config.study.part)
      configs = [study.cell_config(config, spec, overrides, config.seed)
                 for _, overrides in spec.cells]
    for c in configs:
      cfg = pipeline.effective_config(c)
      for method, preset, source in runs.parse_runs(cfg.pipeline.runs):
        quantize.run_spec(pipeline.run_config(cfg, method, preset, source).quant)
  if mode == 'evaluate':
    evaluate.check_weights(config, evaluate.eval_spec(config))
  if mode == 'train':
    sections.spec_from_section(TrainSpec, config.train, 'train')


def check(config) -> None:
  """Raises ConfigError (or the spec's ValueError) naming the first bad field."""
  if config.mode not in MODES:
    raise ConfigError(f'unknown mode {config.mode!r} (config.mode); choose one of '
                      f'{", ".join(MODES)} or help.')
  check_checkpoint(config, config.mode)
  check_sections(config, config.mode)
