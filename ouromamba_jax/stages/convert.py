"""Mode `convert`: an official `.pth` checkpoint -> `.safetensors` (the official key names of
the model's family: hustvl Vim, VMamba, MambaVision).

The checkpoint is loaded strictly into the model of `config.model` first, so a file that does
not fit the architecture fails here, with every bad key listed, not later in a run. Reading a
`.pth` never executes pickled code (ouromamba_jax.io.pth), and the output is a format that
cannot carry code at all. `convert.input='random'` writes seeded random-init weights instead:
a stand-in checkpoint for smoke runs of the full-size models.
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

from ouromamba_jax import checkpoints
from ouromamba_jax.io import families
from ouromamba_jax.stages import sections

RANDOM = 'random'


def _output_path(ccfg, source: str, workdir: str, model_name: str) -> str:
  if ccfg.output:
    out = ccfg.output
  elif source == RANDOM:
    out = os.path.join(workdir, f'{model_name}_random.safetensors')
  else:
    out = os.path.join(workdir, os.path.splitext(os.path.basename(source))[0] + '.safetensors')
  if not out.endswith('.safetensors'):
    raise ValueError(f'convert.output={out!r} must end in .safetensors')
  if os.path.abspath(out) == os.path.abspath(source):
    raise ValueError(f'convert.output equals convert.input ({out}); choose another output path.')
  return out


def convert(config, workdir: str) -> dict[str, Any]:
  """Writes the safetensors file; returns {'input', 'output', 'tensors', 'dtype'}."""
  ccfg = config.convert
  if ccfg.dtype not in ('', *checkpoints.DTYPES):
    raise ValueError(f'convert.dtype must be "" (keep the source dtype) or one of '
                     f'{sorted(checkpoints.DTYPES)}, got {ccfg.dtype!r}')
  model = sections.model_from_config(config.model)
  source = ccfg.input or config.model.checkpoint
  if source == checkpoints.BUNDLED_NAME:
    source = checkpoints.bundled_path(model, config.model.name)
  if not source:
    raise ValueError(checkpoints.missing_checkpoint_message(config.model.name) +
                     f' (Or --config.convert.input={RANDOM} for random-init weights.)')
  if source != RANDOM and not os.path.isfile(source):
    raise FileNotFoundError(f'convert.input {source!r} does not exist; pass '
                            '--config.convert.input=PATH to an official .pth file of the '
                            "model's family (hustvl Vim, VMamba or MambaVision).")
  output = _output_path(ccfg, source, workdir, config.model.name)
  if source == RANDOM:
    params = checkpoints.random_params(model, config.seed)
    dtype = ccfg.dtype or 'float32'
  else:
    keys, key = checkpoints.family(model)   # hustvl Vim, VMamba or MambaVision names
    state_dict = families.read_state_dict(source, key)
    params = keys.params_from_state_dict(  # strict: every bad key in one error
        state_dict, keys.model_param_shapes(model), source=source,
        model_name=f'config.model {config.model.name!r}')
    # '' keeps the checkpoint's own dtype, so an fp16/bf16 file stays that size.
    dtypes = {str(v.dtype) for v in state_dict.values()}
    dtype = ccfg.dtype or (dtypes.pop() if len(dtypes) == 1 else 'float32')
  checkpoints.save_checkpoint(params, output, dtype=None if dtype == 'float32' else dtype,
                              model=model)
  count = len(jax.tree_util.tree_leaves(params))
  logging.info('[convert] %s -> %s (%d tensors, %s)', source, output, count, dtype)
  return {'input': source, 'output': output, 'tensors': count, 'dtype': dtype}


def run(config, workdir: str) -> dict[str, Any]:
  return convert(config, workdir)
