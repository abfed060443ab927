"""Config pieces shared by every experiment file (big_vision style: configs are code).

Each `*_config()` returns one section; experiment files (configs/vim_*.py) assemble them and
override what differs. The gen, quant, eval and train sections are built from their spec
dataclasses (GenSpec, QuantRunSpec, EvalSpec, TrainSpec), where each field's default and
documentation live (`spec_fields.field_help(cls)` lists them); the stages turn a section back
into its spec and refuse unknown fields.
"""
from __future__ import annotations

import dataclasses

import ml_collections as mlc

from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.quant.run_spec import QuantRunSpec
from ouromamba_jax.stages.eval_spec import EvalSpec
from ouromamba_jax.stages.runs import DEMO_RUNS
from ouromamba_jax.train.spec import TrainSpec


def section_from_spec(spec_cls) -> mlc.ConfigDict:
  """A ConfigDict with every field of `spec_cls` at its default (None -> a typed placeholder)."""
  c = mlc.ConfigDict()
  for f in dataclasses.fields(spec_cls):
    if f.default is None:
      c[f.name] = mlc.config_dict.placeholder(f.metadata['type'])
    else:
      c[f.name] = f.default
  return c


OVERRIDABLE = {'img_size': int, 'patch_size': int, 'in_chans': int, 'num_classes': int,
               'd_model': int, 'depth': int, 'd_state': int, 'expand': int, 'dt_rank': int}


def model_config(name: str, **overrides) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.name = name                      # registry name: vim_t | vim_s | vim_b | vim_t_cifar10
  # Architecture fields left unset (None) keep the registered variant's value.
  c.overrides = mlc.ConfigDict({k: mlc.config_dict.placeholder(t) for k, t in OVERRIDABLE.items()})
  c.overrides.update(overrides)
  c.dtype = 'float32'                # compute dtype: float32 | bfloat16 (params, residual, scan state stay fp32)
  c.scan_implementation = ''         # '' = platform default; xla | associative | sequential | triton
  c.quant_implementation = ''        # integer-mode linears: '' = platform default (triton on GPU); xla | triton
  c.checkpoint = ''                  # .pth / .safetensors path; 'bundled' = the shipped testbed model; '' = random init
  return c


def data_config(name: str) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.name = name                      # cifar10 | imagenet
  c.data_dir = ''                    # folder holding the dataset archives/images ('' = the dataset's default search path)
  c.cache_dir = ''                   # where archives are extracted ('' = ~/.cache/ouromamba_jax)
  c.use_tfds = True                  # fall back to tensorflow-datasets when no local data is found (online machines)
  c.eval_images = 0                  # 0 = the whole evaluation split
  c.eval_batch_size = 256
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.mode = 'pipeline'                # train | evaluate | convert | generate | quantize | pipeline
  c.workdir = 'workdir/default'
  c.seed = 0
  # JAX's persistent compilation cache: a quantized model compiles once per preset and method,
  # later runs and processes (e.g. the pipeline's table split over GPUs) load it. '' = off.
  c.compilation_cache = '~/.cache/ouromamba_jax/xla'
  return c


def train_config() -> mlc.ConfigDict:
  """The testbed recipe (mode `train`): `ouromamba_jax.train.spec.TrainSpec`."""
  return section_from_spec(TrainSpec)


def gen_config() -> mlc.ConfigDict:
  """OuroMamba-Gen (mode `generate`): `ouromamba_jax.gen.spec.GenSpec`."""
  return section_from_spec(GenSpec)


def eval_config() -> mlc.ConfigDict:
  """Mode `evaluate`: `ouromamba_jax.stages.eval_spec.EvalSpec`."""
  return section_from_spec(EvalSpec)


def quant_config() -> mlc.ConfigDict:
  """OuroMamba-Quant (mode `quantize`): `ouromamba_jax.quant.run_spec.QuantRunSpec`.
  Outputs go to <workdir>/quant/<run name>/."""
  return section_from_spec(QuantRunSpec)


def convert_config() -> mlc.ConfigDict:
  """Mode `convert`: a hustvl .pth -> .safetensors, checked strictly against config.model."""
  c = mlc.ConfigDict()
  c.input = ''                       # .pth path; '' = model.checkpoint; 'random' = seeded random init
  c.output = ''                      # .safetensors path; '' = WORKDIR/<input name>.safetensors
  c.dtype = ''                       # '' = the checkpoint's own | float32 | bfloat16
  return c


# hustvl ImageNet models (vim_t/s/b at 224) share everything but the name; where to get the
# official weights is ouromamba_jax.checkpoints.HUSTVL_CHECKPOINTS.
def hustvl_imagenet_config(model_name: str) -> mlc.ConfigDict:
  c = base_config()
  c.workdir = f'workdir/{model_name}'
  c.model = model_config(model_name)
  c.data = data_config('imagenet')
  c.data.data_dir = '../shared/data/imagenet_val_300'
  c.data.eval_batch_size = 64
  c.eval = eval_config()
  c.convert = convert_config()
  c.gen = gen_config()
  return c


def pipeline_config() -> mlc.ConfigDict:
  """Mode `pipeline`: generate -> quantize -> evaluate (FP and quantized) -> report."""
  c = mlc.ConfigDict()
  # Quantization runs as 'method:preset:source' (source: gen | noise | real); 'table' = the 21
  # runs of RESULTS.md (W8A8/W4A8/W4A4 x RTN, PTQ4VM+real, OuroMamba+noise/gen/real, plus
  # OuroMamba W4A4_ALOG and W4A4_SSM8 x noise/gen/real). Default: DEMO_RUNS.
  c.runs = DEMO_RUNS
  c.eval_images = 500                # test images per evaluation (0 = the whole split)
  c.full = False                     # True: the paper-size settings (see stages.pipeline.FULL)
  return c
