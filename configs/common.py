"""Config pieces shared by every experiment file (big_vision style: configs are code).

Each `*_config()` returns one section; experiment files (configs/vim_*.py) assemble them and
override what differs. Every section is built from a dataclass declared with
`spec_fields.field`, where each field's default and documentation live: the spec of its stage
(GenSpec, QuantRunSpec, EvalSpec, TrainSpec), which the stage turns the section back into, or
one of the `*Section` classes below. `SECTIONS` lists them all for `main.py --help`.
"""
from __future__ import annotations

import dataclasses

import ml_collections as mlc

from ouromamba_jax.distributed import DistributedSpec
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models import registry
from ouromamba_jax.quant.run_spec import QuantRunSpec
from ouromamba_jax.spec_fields import field
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
               'd_model': int, 'depth': int, 'd_state': int, 'expand': int, 'dt_rank': int,
               'dims': int, 'depths': tuple, 'ssm_ratio': float}   # the last three: VMamba
DEMO_EVAL_IMAGES = 500               # the demo's evaluation slice (pipeline and mode `evaluate`)
IMAGENET_SMOKE_DIR = '../shared/data/imagenet_val_300'


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """The model and its weights (every mode)."""
  name: str = field('vim_t_cifar10', 'registry name: ' + ' | '.join(registry.variant_names()))
  dtype: str = field(
      'float32', 'compute dtype: float32 | bfloat16 (params, residual, scan state stay fp32)')
  scan_implementation: str = field(
      '', "'' = the platform's best; xla | associative | sequential | triton")
  quant_implementation: str = field(
      '', "integer-mode linears: '' = platform default (triton on GPU); xla | triton")
  checkpoint: str = field(
      '', "an official .pth (hustvl Vim, VMamba, MambaVision) / .safetensors path; 'bundled' = "
      "the shipped testbed model; '' = none (random init where a mode allows it)")


@dataclasses.dataclass(frozen=True)
class DataSection:
  """The evaluation (and training) data."""
  name: str = field('cifar10', 'cifar10 | imagenet')
  data_dir: str = field(
      '', "dataset folder or archive ('' = $OUROMAMBA_IMAGENET_DIR / tfds for imagenet)")
  smoke_dir: str = field(
      '', 'evaluated instead, labelled a smoke check, when data_dir holds no data')
  cache_dir: str = field('', "where archives are extracted ('' = ~/.cache/ouromamba_jax)")
  use_tfds: bool = field(True, 'fall back to tensorflow-datasets when no local data is found')
  eval_images: int = field(DEMO_EVAL_IMAGES, 'images per evaluation (0 = the whole split)')
  eval_batch_size: int = field(256, 'images per evaluation batch')


@dataclasses.dataclass(frozen=True)
class PipelineSection:
  """Mode `pipeline`: generate -> quantize -> evaluate (FP and quantized) -> report."""
  runs: str = field(
      DEMO_RUNS, "'method:preset:source,...' (source: gen | noise | real) or 'table' (the 21 "
      'runs of RESULTS.md)')
  full: bool = field(False, 'the paper-size settings (stages.pipeline.FULL) in <workdir>/full')
  keep: str = field('', 'section.field names (comma-separated) that pipeline.full leaves as '
                    'given; main.py adds every --config.* field set on the command line')
  workers: int = field(
      0, 'worker processes for the runs, each on its own GPUs (0 = one per local GPU when there '
      'are 2 or more, else none; 1 = every run in this process)')
  worker: int = field(-1, 'internal: the index of a worker process (the pipeline sets it)')


@dataclasses.dataclass(frozen=True)
class StudySection:
  """Mode `study`: one of the paper's ablations as pipeline runs with a seed spread."""
  name: str = field('seeds', 'seeds | calib_size | gen_loss | n_refresh | k | neighbourhood | '
                    'positives (stages.study.STUDIES)')
  seeds: int = field(3, 'seeds per cell (base seed, +1, ...): the spread every cell reports')
  part: str = field('', "'i/n': run only every n-th (cell, seed) from the i-th (0-based), so n "
                    "processes share one study's workdir (and its Gen store); they write no "
                    "report: a last run without part collects the finished cells into it")
  report_only: bool = field(False, 'write the report from the cells finished so far (their '
                            'cell.json records), running none: a partial study\'s state, on '
                            'any machine')


@dataclasses.dataclass(frozen=True)
class ConvertSection:
  """Mode `convert`: an official .pth (hustvl Vim, VMamba, MambaVision) -> .safetensors under
  the same names, checked strictly against config.model."""
  input: str = field('', "a .pth path; '' = model.checkpoint; 'random' = seeded random init")
  output: str = field('', "a .safetensors path; '' = WORKDIR/<input name>.safetensors")
  dtype: str = field('', "'' = the checkpoint's own | float32 | bfloat16")


@dataclasses.dataclass(frozen=True)
class BaseSection:
  """Top-level fields."""
  mode: str = field('pipeline',
                    'pipeline | generate | quantize | evaluate | train | convert | study | help')
  workdir: str = field('workdir/default', 'where outputs go (--workdir overrides it)')
  seed: int = field(0, 'random init, Gen targets and noise, calibration subsets')
  compilation_cache: str = field(
      '~/.cache/ouromamba_jax/xla',
      "JAX's persistent compilation cache: later runs load what compiled once ('' = off)")


# The documentation of every config section: `main.py --help` prints it.
SECTIONS = {'': BaseSection, 'model': ModelSection, 'data': DataSection, 'gen': GenSpec,
            'quant': QuantRunSpec, 'eval': EvalSpec, 'train': TrainSpec,
            'pipeline': PipelineSection, 'convert': ConvertSection, 'study': StudySection,
            'distributed': DistributedSpec}
OVERRIDES_HELP = ('architecture fields of the registered variant (None = its value): '
                  + ', '.join(OVERRIDABLE))


def model_config(name: str, **overrides) -> mlc.ConfigDict:
  c = section_from_spec(ModelSection)
  c.name = name
  c.overrides = mlc.ConfigDict({k: mlc.config_dict.placeholder(t) for k, t in OVERRIDABLE.items()})
  c.overrides.update(overrides)
  return c


def data_config(name: str) -> mlc.ConfigDict:
  c = section_from_spec(DataSection)
  c.name = name
  return c


def base_config() -> mlc.ConfigDict:
  """Top-level fields and the `distributed` section (read by the modes that may run on several
  processes: those of `stages.MODE_SECTIONS` that list it; main.py refuses the others)."""
  c = section_from_spec(BaseSection)
  c.distributed = distributed_config()
  return c


def distributed_config() -> mlc.ConfigDict:
  """Several processes / hosts: `ouromamba_jax.distributed.DistributedSpec`."""
  return section_from_spec(DistributedSpec)


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
  return section_from_spec(ConvertSection)


def pipeline_config() -> mlc.ConfigDict:
  return section_from_spec(PipelineSection)


def study_config() -> mlc.ConfigDict:
  return section_from_spec(StudySection)


def demo_sections(c: mlc.ConfigDict) -> None:
  """Gen, quant and pipeline at demo size (a laptop CPU); `pipeline.full=True` applies the
  paper size (stages.pipeline.FULL)."""
  c.gen = gen_config()
  c.gen.num_images = 8               # paper: 128
  c.gen.iterations = 16              # paper: 1000
  c.gen.log_every = 4
  c.gen.checkpoint_every = 8
  c.quant = quant_config()
  c.quant.calib_images = 8           # the 8 Gen images (paper: 128)
  c.quant.epochs = 2                 # paper: 10
  c.pipeline = pipeline_config()
  c.study = study_config()


# hustvl ImageNet models (vim_t/s/b at 224) share everything but the name; where to get the
# official weights is ouromamba_jax.checkpoints.HUSTVL_CHECKPOINTS.
def cifar10_testbed_config(model_name: str) -> mlc.ConfigDict:
  """Every section of a CIFAR-10 testbed config (train, eval, convert and the demo pipeline)
  for a registered 32x32 model; the files only set what differs (e.g. a bundled checkpoint)."""
  c = base_config()
  c.workdir = f'workdir/{model_name}'
  c.model = model_config(model_name)
  c.data = data_config('cifar10')
  c.data.data_dir = '../shared/data/cifar10'
  c.train = train_config()
  c.eval = eval_config()
  c.convert = convert_config()
  demo_sections(c)
  c.gen.remat = False                # 32x32 states are small; no recompute is faster
  return c


def hustvl_imagenet_config(model_name: str) -> mlc.ConfigDict:
  """The data-free pipeline on an official checkpoint: ImageNet is only read to evaluate
  (data.data_dir, else the 300-image smoke check, else evaluation is skipped)."""
  c = base_config()
  c.workdir = f'workdir/{model_name}'
  c.model = model_config(model_name)
  c.data = data_config('imagenet')
  c.data.smoke_dir = IMAGENET_SMOKE_DIR
  c.data.eval_batch_size = 64
  c.eval = eval_config()
  c.convert = convert_config()
  demo_sections(c)
  return c
