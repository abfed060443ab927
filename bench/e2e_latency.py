"""End-to-end Vim latency and throughput: fp32 XLA, bf16 XLA, bf16 + Pallas scan, W8A8, W4A4O8.

  python bench/e2e_latency.py --out=e2e_latency.json            # GPU: Vim-T/S/B, batch 1/16/64/128
  python bench/e2e_latency.py --models=vim_b --batches=64       # one cell of the issue's targets
  python bench/e2e_latency.py --smoke --out=/tmp/e2e_smoke.json  # tiny model on CPU, seconds

Everything runs in one process on one device, so all numbers of a run come from the same card.
Weights are random (fine for speed). Variants (`--variants`):

  fp32_xla          float32 compute, XLA associative scan
  bf16_xla          bfloat16 compute, XLA associative scan
  bf16_pallas_scan  bfloat16 compute, the Pallas selective-scan kernel (--scan_kernel)
  w8a8              bf16 + Pallas scan, integer-mode W8A8 tree: every quantized Linear runs
                    act_quant + mixed_gemm (--quant_kernel), int8 outliers (O8) included
  w4a4o8            same with the W4A4 preset: int4 weights (packed two per byte), int4 inlier
                    codes (one per byte), int8 outliers

Quantized trees come from the quant API (`quant.quantize`) with the RTN recipe: min-max scales,
no block reconstruction (epochs=0). To keep the set-up short (quantizing all 24 random Vim-B
blocks took over 230 s on an H200), only the first `--calib_depth` blocks are quantized and
their quantized params are repeated over the model's depth: latency does not depend on the
values, and the repeated blocks are real calibrated ones. The 'rtn' *method* also switches outlier detection off, so
the trees are built with method 'ouromamba' and those RTN settings instead, keeping the
preset's outlier path (the dynamic detection and the int8 outlier GEMM) in the timed forward.
The kernels' cost does not depend on how many channels become outliers (the outlier operand is
a dense int8 matrix, zero outside the outlier channels, and detection runs at every step), so
the outlier rate is not imposed: it is measured (fraction of flagged entries over all
quantized Linear inputs of `--rate_images` random images, on the `--calib_depth`-block model)
and written to the JSON; `--outlier_k`
(the mu + k sigma threshold) steers it.

A/B runs in one process (`--cases`): each case is a set of the switch flags below
(model fields such as `fuse_linear_inputs` and `scan_blocks`, XLA compile options such as
`xla_dynamic_slice_fusion`, the kernels' switches such as `act_quant_segments`: `CASE_FLAGS`)
on top of the command line's, e.g.
`--cases=default,fuse_linear_inputs=0,act_quant_small_grid=0`;
every variant runs in every case, from the same quantized trees, so a card quantizes once and
the cases' numbers share one process (a row's `case` names it).

Timing: per (model, variant, case, batch), the jitted forward is lowered in order (a case's
library switches are read while tracing), then compiled ahead of time (compile time
reported apart; a model's cells compile concurrently in `--compile_workers` threads), run
`--warmup` times, then `--iters` times, each call timed to `block_until_ready`, one cell after
another; the median is the latency, batch / median the throughput. `--out` is rewritten after
every cell. With
`--cast_params` (default) the plain float leaves of the tree are stored in the compute dtype
(bf16 weights for the bf16 variants); quantized leaves are left as they are. Each batch runs
the tree laid out for it as a user's inference would (`ouromamba_jax.inference.
prepared_for_inference`: the A/D sites folded, `--fold_sites`, and Vim's directions stacked once
where the forward vmaps them, `--stack_directions`).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import statistics
import sys
import time
import traceback
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ouromamba_jax import quant  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import vim  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.quant import presets as quant_presets  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.quant import qtypes  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.quant import int_linear  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas.act_quant import config as act_quant_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas.mixed_gemm import config as mixed_gemm_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas.selective_scan import api as scan_api  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas.selective_scan import config as scan_config  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = {
    # name: (registry name, model overrides)
    'vim_t': ('vim_t', {}),
    'vim_s': ('vim_s', {}),
    'vim_b': ('vim_b', {}),
    'tiny': ('vim_t', dict(img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10)),
}
BATCHES = (1, 16, 64, 128)


@dataclasses.dataclass(frozen=True)
class Variant:
  dtype: str                 # compute dtype of the model
  pallas_scan: bool          # scan via --scan_kernel (else the XLA associative scan)
  preset: Optional[str]      # quantization preset of the integer-mode tree (None: float)
  quant_kernel: Optional[str] = None  # overrides --quant_kernel (profiling variants)


VARIANTS = {
    'fp32_xla': Variant('float32', False, None),
    'bf16_xla': Variant('bfloat16', False, None),
    'bf16_pallas_scan': Variant('bfloat16', True, None),
    'w8a8': Variant('bfloat16', True, 'w8a8'),
    'w4a4o8': Variant('bfloat16', True, 'w4a4'),
    # Profiling variants: each removes one part of w4a4o8, so the differences say where its
    # time goes (not in the default set).
    'w4a4o8_xla_kernels': Variant('bfloat16', True, 'w4a4', quant_kernel='xla'),
    'w4a4o8_float_ssm': Variant('bfloat16', True, 'w4a4_float_ssm'),
    'w4a4_no_outliers': Variant('bfloat16', True, 'w4a4_no_outliers'),
}
DEFAULT_VARIANTS = ('fp32_xla', 'bf16_xla', 'bf16_pallas_scan', 'w8a8', 'w4a4o8')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _csv(kind):
  return lambda s: [kind(v) for v in s.split(',') if v]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', type=_csv(str), default=['vim_t', 'vim_s', 'vim_b'],
                 help=f'comma-separated, from {list(MODELS)}')
  p.add_argument('--variants', type=_csv(str), default=list(DEFAULT_VARIANTS),
                 help=f'comma-separated, from {list(VARIANTS)}')
  p.add_argument('--batches', type=_csv(int), default=None,
                 help=f'comma-separated (default {",".join(map(str, BATCHES))}; smoke: 1,2)')
  p.add_argument('--depth', type=int, default=0,
                 help="blocks per model (0 = the model's own depth; a profile can use fewer)")
  p.add_argument('--iters', type=int, default=20, help='timed calls per cell')
  p.add_argument('--warmup', type=int, default=3, help='untimed calls after compilation')
  p.add_argument('--scan_kernel', default='default',
                 choices=('default',) + tuple(scan_api.IMPLEMENTATIONS),
                 help="scan implementation of the Pallas-scan and quantized variants; "
                      "'default' is the library's platform choice (on a GPU the Pallas kernel, "
                      "its sequence split at small batches; --scan_small_batch moves the "
                      "smallest batches to the associative scan)")
  p.add_argument('--quant_kernel', default='triton', choices=int_linear.IMPLEMENTATIONS,
                 help="act_quant + mixed_gemm implementation of the quantized variants "
                      "('triton' | 'xla')")
  p.add_argument('--calib_images', type=int, default=8, help='images for the RTN scales')
  p.add_argument('--calib_depth', type=int, default=2,
                 help='blocks quantized for real; their params repeat over the full depth '
                      '(0 = quantize every block)')
  p.add_argument('--rate_images', type=int, default=8, help='images for the outlier rate')
  p.add_argument('--n_refresh', type=int, default=0,
                 help="outlier-set reset period in steps (0 = the preset's, 10)")
  p.add_argument('--outlier_k', type=float, default=3.0,
                 help='outlier threshold mu + k sigma of the Linear inputs (ActSpec.k)')
  p.add_argument('--cast_params', type=int, default=1,
                 help='1: store plain float params in the compute dtype')
  p.add_argument('--compile_workers', type=int, default=8,
                 help="threads compiling one model's cells concurrently (timing stays serial)")
  p.add_argument('--batch_directions', type=int, default=-1, choices=(-1, 0, 1),
                 help='1: the mixers run both scan directions as one vmapped batch '
                      '(VisionMamba.batch_directions), 0: one after the other, -1: the '
                      "library's measured rule (vim.directions_as_one_batch); every variant")
  p.add_argument('--fold_sites', type=int, default=1, choices=(0, 1),
                 help='1: A and D quantized once (quant.fold_parameter_sites), as inference '
                      'does; 0: re-quantized in every forward')
  p.add_argument('--act_quant_small_grid', type=int, default=-1,
                 help='act_quant launches of at most this many programs get more warps '
                      '(0: never; -1: the library default, act_quant config.SMALL_GRID_PROGRAMS)')
  p.add_argument('--act_quant_tile_elements', type=int, default=-1,
                 help='lanes of one act_quant program (samples x channels) when the kernel '
                      'picks its samples per program, e.g. 4096: 2 samples at C = 1536 '
                      '(-1: the library default, act_quant config.TILE_ELEMENTS)')
  p.add_argument('--act_quant_segments', type=int, default=-1, choices=(-1, 0, 1),
                 help="1: Vim's x_proj output (dt, B, C) quantized in one act_quant launch "
                      '(act_quant config.SEGMENTS_IN_ONE_LAUNCH), 0: two launches '
                      '(-1: the library default)')
  p.add_argument('--gemm_sweep_tiles', type=int, default=-1, choices=(-1, 0, 1),
                 help="1: the mixed GEMM's per-shape tiles from the tile sweep, 0: one tile "
                      '(mixed_gemm config.SWEEP_TILES; -1: the library default)')
  p.add_argument('--gemm_weights_as_stored', type=int, default=-1,
                 help='mixed GEMM calls of at most this many rows read the weight as stored, '
                      'unpacking int4 in the kernel, with no per-call XLA copy (0: never; -1: '
                      'the library default, mixed_gemm config.WEIGHTS_AS_STORED_UP_TO_ROWS)')
  p.add_argument('--gemm_narrow_as_stored', type=int, default=-1,
                 help='an int4 weight with fewer output or input channels than this is read as '
                      'stored at every batch (0: never; -1: the library default, mixed_gemm '
                      'config.AS_STORED_NARROWER_THAN)')
  p.add_argument('--gemm_narrow_n_small_tile', type=int, default=-1,
                 help='calls of more rows than this into fewer than 128 output channels run a '
                      '64 x 64 x 128 tile on the unpacked weight (0: never; -1: the library '
                      'default, mixed_gemm config.NARROW_N_SMALL_TILE_ABOVE_ROWS)')
  p.add_argument('--scan_small_batch', type=int, default=-1,
                 help='below this batch the default scan is XLA\'s associative one, not the '
                      'Triton kernel (0: the kernel at every batch; -1: the library default, '
                      'selective_scan api.SMALL_BATCH)')
  p.add_argument('--scan_segment_programs', type=int, default=-1,
                 help="the Triton scan splits the sequence of a small batch until about this "
                      'many programs run (0: no split; -1: the library default, selective_scan '
                      'config.SEGMENT_TARGET_PROGRAMS)')
  p.add_argument('--fuse_linear_inputs', type=int, default=1, choices=(0, 1),
                 help="1 (the model's default): Vim's direction mean before out_proj is fused, "
                      'in every variant (VisionMamba.fuse_linear_inputs): into the backward '
                      "scan where the directions are looped, into an int out_proj's act_quant "
                      'where vmapped; 0: formed by its own pass')
  p.add_argument('--stack_directions', type=int, default=-1, choices=(-1, 0, 1),
                 help="-1 (the library's inference layout, vim.prepared_for_batch): each "
                      "batch's tree holds the mixers' two directions' params stacked once "
                      "where the forward vmaps them; 1: "
                      'stacked at every batch (vim.with_directions_stacked); 0: the trees as '
                      'stored')
  p.add_argument('--scan_blocks', type=int, default=1, choices=(0, 1),
                 help="1 (the model's default): the blocks run under one lax.scan over their "
                      'stacked params (VisionMamba.scan_blocks); 0: one call per block on its '
                      'own params (no per-call stacking, no per-block slices of stacked '
                      'params; compiles longer)')
  p.add_argument('--scan_unroll', type=int, default=-1,
                 help="blocks traced per iteration of the block scan (VisionMamba.scan_unroll; "
                      ">= depth: the loop unrolled over the stacked params; -1: the library's "
                      'measured rule, vim.block_scan_unroll)')
  p.add_argument('--xla_dynamic_slice_fusion', type=int, default=-1, choices=(-1, 0, 1),
                 help='1: compiled with xla_gpu_enable_dynamic_slice_fusion (a kernel gets the '
                      "address of a slice of the blocks' stacked params instead of a copy), "
                      "0: without; -1: XLA's default (XLA_FLAGS). A compile option per cell, so "
                      'a case can A/B it in one process')
  p.add_argument('--xla_command_buffer', type=int, default=-1, choices=(-1, 0, 1),
                 help="1: every op in XLA's CUDA graphs (command buffers), Pallas' Triton calls "
                      "and the block loop included; 0: none; -1: XLA's default")
  p.add_argument('--cases', type=_csv(str), default=['default'],
                 help="comma-separated A/B cases, each 'default' or FLAG=INT[+FLAG=INT...] "
                      f'with FLAG from {list(CASE_FLAGS)}, applied on top of the flags above')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default='', help='JSON file for the results')
  p.add_argument('--smoke', action='store_true',
                 help='tiny model, batches 1 and 2, 2 timed calls (CPU check of this script)')
  args = p.parse_args(argv)
  if args.smoke:
    args.models, args.iters, args.warmup = ['tiny'], min(args.iters, 2), 1
    args.calib_images, args.rate_images = 4, 2
  if args.batches is None:
    args.batches = [1, 2] if args.smoke else list(BATCHES)
  for name, valid in (('models', MODELS), ('variants', VARIANTS)):
    unknown = [v for v in getattr(args, name) if v not in valid]
    if unknown:
      p.error(f'unknown {name} {unknown}; choose from {list(valid)}')
  try:
    args.case_settings = {case: case_overrides(case) for case in args.cases}
    for settings in [vars(args)] + list(args.case_settings.values()):
      check_switches(settings)
  except ValueError as e:
    p.error(str(e))
  return args


# The kernels' module-level switches a flag sets: flag -> (config module, attribute, the least
# value it takes; -1 always means the library default).
SWITCHES = {'act_quant_small_grid': (act_quant_config, 'SMALL_GRID_PROGRAMS', 0),
            'act_quant_tile_elements': (act_quant_config, 'TILE_ELEMENTS', 1),
            'act_quant_segments': (act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', 0),
            'gemm_sweep_tiles': (mixed_gemm_config, 'SWEEP_TILES', 0),
            'gemm_weights_as_stored': (mixed_gemm_config, 'WEIGHTS_AS_STORED_UP_TO_ROWS', 0),
            'gemm_narrow_as_stored': (mixed_gemm_config, 'AS_STORED_NARROWER_THAN', 0),
            'gemm_narrow_n_small_tile': (mixed_gemm_config, 'NARROW_N_SMALL_TILE_ABOVE_ROWS', 0),
            'scan_small_batch': (scan_api, 'SMALL_BATCH', 0),
            'scan_segment_programs': (scan_config, 'SEGMENT_TARGET_PROGRAMS', 0)}
# XLA options a flag's value sets (-1 leaves XLA's own settings): flag -> {value: options}.
_ALL_COMMANDS = 'FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL'
COMPILE_OPTIONS = {
    'xla_dynamic_slice_fusion': {
        0: {'xla_gpu_enable_dynamic_slice_fusion': False},
        1: {'xla_gpu_enable_dynamic_slice_fusion': True}},
    # 0: no CUDA graphs; 1: every command type (the block loop included) in graphs of any size
    # (session 11 timed this through XLA_FLAGS on an older tree: slower at batch 1).
    'xla_command_buffer': {
        0: {'xla_gpu_enable_command_buffer': ''},
        1: {'xla_gpu_enable_command_buffer': _ALL_COMMANDS, 'xla_gpu_graph_min_graph_size': 1}},
}
# The flags a case may set: model fields, compile options and the kernels' module-level switches.
CASE_FLAGS = ('fuse_linear_inputs', 'batch_directions', 'scan_blocks', 'scan_unroll',
              'stack_directions', *COMPILE_OPTIONS, *SWITCHES)


def compiler_options(args) -> dict:
  """The XLA options the flags set, for `Lowered.compile`."""
  out = {}
  for flag, choices in COMPILE_OPTIONS.items():
    if getattr(args, flag) >= 0:
      out.update(choices[getattr(args, flag)])
  return out


def check_switches(settings: dict) -> None:
  """Refuses a switch value the kernels cannot take, naming the flag."""
  for flag, (_, _, least) in SWITCHES.items():
    value = settings.get(flag, -1)
    if value != -1 and value < least:
      raise ValueError(f'{flag}={value}: use -1 (the library default) or an int >= {least}')


def case_overrides(case: str) -> dict[str, int]:
  """'default' -> {}; 'a=1+b=0' -> {'a': 1, 'b': 0}, each a flag of CASE_FLAGS."""
  if case == 'default':
    return {}
  out = {}
  for part in case.split('+'):
    name, eq, value = part.partition('=')
    if name not in CASE_FLAGS or not eq or not value.lstrip('-').isdigit():
      raise ValueError(f"--cases: {part!r} in case {case!r} is not FLAG=INT with FLAG from "
                       f"{list(CASE_FLAGS)} (or the whole case 'default')")
    out[name] = int(value)
  return out


def case_args(args, case: str):
  """The command line's args with the case's flags set."""
  return argparse.Namespace(**{**vars(args), **args.case_settings[case]})


def _images(model, batch: int, seed: int):
  shape = (batch, model.img_size, model.img_size, model.in_chans)
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def cast_float_leaves(tree, dtype):
  """Plain float arrays of a (possibly quantized) nested-dict tree in `dtype`; quantized
  objects (their steps, codes and zero points) untouched."""
  if isinstance(tree, Mapping):
    return {k: cast_float_leaves(v, dtype) for k, v in tree.items()}
  if isinstance(tree, jax.Array) and jnp.issubdtype(tree.dtype, jnp.floating):
    return tree.astype(dtype)
  return tree


def weight_bytes(tree, dtype) -> dict[str, int]:
  """Bytes the forward reads for weights: every quantized Linear's codes + steps (+ smoothing)
  as stored, and the same Linears' kernels in the compute dtype for a float tree; `params`
  is the whole tree (float leaves at the compute dtype). Says what quantization saves in
  memory next to what it costs in time."""
  is_quantized = lambda v: isinstance(v, qtypes.QuantizedWeight)
  linear = re.compile(quant_presets.LINEAR_MODULES + '/kernel$')
  total = linears = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quantized)[0]:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if is_quantized(leaf):
      size = sum(a.nbytes for a in jax.tree.leaves(leaf))
    elif jnp.issubdtype(leaf.dtype, jnp.floating):
      size = leaf.size * jnp.dtype(dtype).itemsize
    else:
      size = leaf.nbytes
    total += size
    if is_quantized(leaf) or linear.search(name):
      linears += size
  return {'linear_weight_bytes': linears, 'param_bytes': total}


def quantize_rtn(model, params, preset: str, calib_images, outlier_k: float,
                 n_refresh: Optional[int] = None):
  """Integer-mode tree: the preset with RTN scales (min-max, no reconstruction), outliers on
  (threshold mu + outlier_k sigma, reset every n_refresh steps; None: the preset's)."""
  run = quant.QuantRunSpec(preset=preset, epochs=0, k=outlier_k, n_refresh=n_refresh)
  sites = run.sites().map(lambda s: dataclasses.replace(s, init='minmax'))
  spec = quant.QuantSpec(preset, sites.rules(), run.calib())
  qparams, _ = quant.quantize(model, params, calib_images, spec, method='ouromamba', mode='int',
                              log=lambda _: None)
  return qparams


def repeated_blocks(model, tree, depth: int):
  """`tree` of a `model.depth`-block model spread over `depth` blocks: block i gets the params
  of block i mod model.depth (other entries as they are)."""
  out = {k: v for k, v in tree.items() if not k.startswith('layers_')}
  out.update({f'layers_{i}': tree[f'layers_{i % model.depth}'] for i in range(depth)})
  return out


def quantized_tree(base, params, preset: str, args):
  """(integer-mode tree of the full model, outlier rate): RTN over the first `--calib_depth`
  blocks, repeated over the depth."""
  depth = min(args.calib_depth or base.depth, base.depth)
  model = base.clone(depth=depth)
  sub = repeated_blocks(base, params, depth)
  calib = _images(base, args.calib_images, args.seed + 1)
  tree = quantize_rtn(model, sub, preset, calib, args.outlier_k, args.n_refresh or None)
  rate = outlier_rate(model.clone(quant_implementation='xla'), tree,
                      _images(base, args.rate_images, args.seed + 2))
  tree = repeated_blocks(model, tree, base.depth)
  return (quant.fold_parameter_sites(tree) if args.fold_sites else tree), rate


def outlier_rate(model, tree, images) -> dict[str, float]:
  """Fraction of flagged entries over all quantized Linear inputs that detect outliers (and
  the fraction of (token, Linear) pairs with at least one outlier channel)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.models import layers  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.quant import activations as act_lib  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.quant import weights as w_lib  # pylint: disable=g-import-not-at-top

  def run(tree, images):
    counts = []

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if isinstance(module, layers.Linear) and context.method_name == '__call__':
        kernel = module.get_variable('params', 'kernel')
        iq = module.get_variable('params', 'input_quantizer')
        if (isinstance(kernel, qtypes.QuantizedWeight) and iq is not None
            and iq.spec.outliers != 'none'):
          x = args[0].astype(jnp.float32)
          if kernel.smooth is not None:
            x = x / jnp.maximum(kernel.smooth, w_lib.MIN_SMOOTH)
          mask = iq.parts(act_lib.as_steps(x, 'steps')[0], ste=False).outlier_mask
          counts.append((jnp.sum(mask), mask.size, jnp.sum(jnp.any(mask, -1)), mask[..., 0].size))
      return next_fun(*args, **kwargs)

    # Blocks unrolled, directions looped, every Linear given an array: the interceptor sees each.
    with nn.intercept_methods(interceptor):
      layers.module_by_module(model).apply({'params': tree}, images)
    if not counts:
      return jnp.zeros(()), jnp.zeros(())
    flagged = sum(c[0] for c in counts) / sum(c[1] for c in counts)
    tokens = sum(c[2] for c in counts) / sum(c[3] for c in counts)
    return flagged, tokens

  flagged, tokens = jax.jit(run)(tree, images)
  return {'entries': float(flagged), 'tokens_with_outliers': float(tokens)}


def batch_tree(model, tree, batch: int, stacking: int):
  """The tree a forward of `batch` samples runs (`--stack_directions`): -1 the library's
  inference layout for that batch, 1 the directions stacked, 0 as stored."""
  if stacking == -1:
    return vim.prepared_for_batch(tree, batch, model.batch_directions)
  return vim.with_directions_stacked(tree) if stacking else tree


def lower_forward(model, tree, images):
  """(lowered forward, seconds): tracing reads the kernels' switches, so cells are lowered one
  after another under their case's (`library_switches`)."""
  start = time.perf_counter()
  lowered = jax.jit(lambda t, x: model.apply({'params': t}, x)).lower(tree, images)
  return lowered, time.perf_counter() - start


def compile_lowered(lowered, lower_s: float, options: Optional[dict] = None):
  """(compiled forward, seconds of lowering + XLA compilation) under XLA `options`."""
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options=options or None)
  return compiled, lower_s + time.perf_counter() - start


def compile_forward(model, tree, images, options: Optional[dict] = None):
  """(compiled forward, seconds): one cell lowered and compiled under XLA `options` (the
  other benches' form)."""
  return compile_lowered(*lower_forward(model, tree, images), options)


def time_forward(compiled, tree, images, iters: int, warmup: int) -> dict[str, Any]:
  out = None
  for _ in range(max(warmup, 1)):
    out = jax.block_until_ready(compiled(tree, images))
  if not bool(jnp.all(jnp.isfinite(out))):
    raise FloatingPointError('the benchmarked forward produced non-finite logits')
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(tree, images))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  batch = images.shape[0]
  return {'median_ms': 1e3 * median, 'mean_ms': 1e3 * statistics.mean(times),
          'min_ms': 1e3 * min(times), 'max_ms': 1e3 * max(times),
          'images_per_s': batch / median}


def variant_model(base, variant: Variant, args):
  return base.clone(dtype=DTYPES[variant.dtype],
                    scan_implementation=((None if args.scan_kernel == 'default'
                                          else args.scan_kernel) if variant.pallas_scan
                                         else 'xla'),
                    quant_implementation=(variant.quant_kernel or args.quant_kernel)
                    if variant.preset else None,
                    batch_directions=(None if args.batch_directions < 0
                                      else bool(args.batch_directions)),
                    fuse_linear_inputs=bool(args.fuse_linear_inputs),
                    scan_blocks=bool(args.scan_blocks),
                    scan_unroll=None if args.scan_unroll < 0 else args.scan_unroll)


def _variant_trees(base, params, args, rates, quantize_s, model_name):
  """{variant: its tree or the exception that building it raised} for one model; each preset
  is quantized once, whatever the number of variants and cases using it."""
  trees, out = {}, {}
  for variant_name in args.variants:
    variant = VARIANTS[variant_name]
    try:
      if variant.preset and variant.preset not in trees:
        start = time.perf_counter()
        key = f'{model_name}/{variant.preset}'
        trees[variant.preset], rates[key] = quantized_tree(base, params, variant.preset, args)
        quantize_s[key] = time.perf_counter() - start
      tree = trees[variant.preset] if variant.preset else params
      if args.cast_params:
        tree = cast_float_leaves(tree, DTYPES[variant.dtype])
      out[variant_name] = tree
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      out[variant_name] = e
  return out


@contextlib.contextmanager
def library_switches(args):
  """The kernels' module-level switches the flags set (-1 leaves the library default) for the
  duration, the library's own restored after. Trace caches are cleared on entry: a jitted
  kernel wrapper traced under another case's switches would otherwise be reused for the same
  shapes."""
  saved = {(module, attr): getattr(module, attr) for module, attr, _ in SWITCHES.values()}
  try:
    for flag, (module, attr, _) in SWITCHES.items():
      if getattr(args, flag) >= 0:
        setattr(module, attr, getattr(args, flag))
    jax.clear_caches()
    yield
  finally:
    for (module, attr), value in saved.items():
      setattr(module, attr, value)


def _lowered_cells(base, trees, images, args, model_name):
  """{(variant, case): (model, {batch: tree}) or exception} and {(variant, case, batch): (lowered,
  seconds) or exception}, lowered case by case under each case's switches."""
  cells, lowered = {}, {}
  for case in args.cases:
    settings = case_args(args, case)
    with library_switches(settings):
      for variant_name, tree in trees.items():
        if isinstance(tree, Exception):
          cells[variant_name, case] = tree
          continue
        model = variant_model(base, VARIANTS[variant_name], settings)
        # each batch's tree made once, lowered here and timed in `run`
        per_batch = {batch: batch_tree(model, tree, batch, settings.stack_directions)
                     for batch in args.batches}
        cells[variant_name, case] = (model, per_batch)
        for batch in args.batches:
          try:
            lowered[variant_name, case, batch] = (
                *lower_forward(model, per_batch[batch], images[batch]),
                compiler_options(settings))
          except Exception as e:  # pylint: disable=broad-except
            traceback.print_exc()
            lowered[variant_name, case, batch] = e
    _progress(f'{model_name}: case {case} lowered')
  return cells, lowered


def run(args, on_cell=lambda report: None) -> dict[str, Any]:
  """Every (model, variant, case, batch) cell. A model's cells are compiled concurrently
  (`--compile_workers` threads; XLA compiles outside the GIL); once all have compiled they are
  timed one after another. `on_cell(report)` after every cell."""
  results, rates, quantize_s = [], {}, {}
  device = jax.devices()[0]
  report = {'device': f'{device.platform}: {device.device_kind}', 'jax': jax.__version__,
            'xla_flags': os.environ.get('XLA_FLAGS', ''),   # e.g. command-buffer experiments
            'settings': {k: v for k, v in vars(args).items() if k != 'out'},
            'outlier_rates': rates, 'quantize_s': quantize_s, 'results': results}
  for model_name in args.models:
    registry_name, overrides = MODELS[model_name]
    if args.depth:
      overrides = {**overrides, 'depth': args.depth}
    base = build_model(registry_name, scan_implementation='xla', **overrides)
    params = jax.jit(base.init)(jax.random.key(args.seed), _images(base, 1, 0))['params']
    trees = _variant_trees(base, params, args, rates, quantize_s, model_name)
    built = ', '.join(f'{k} quantized in {v:.0f} s' for k, v in quantize_s.items())
    _progress(f'{model_name}: trees built ({built or "float only"}); lowering')
    images = {b: _images(base, b, args.seed + 3) for b in args.batches}
    cells, lowered = _lowered_cells(base, trees, images, args, model_name)
    jobs = {}
    failed = {key: low for key, low in lowered.items() if isinstance(low, Exception)}
    with concurrent.futures.ThreadPoolExecutor(max(args.compile_workers, 1)) as pool:
      for key, low in lowered.items():
        if key not in failed:
          jobs[key] = pool.submit(compile_lowered, *low)
          jobs[key].add_done_callback(  # a stalled compile shows which cell
              lambda job, key=key: _progress(
                  f'{model_name} {_cell_name(*key[:2])} batch {key[2]}: compiled'
                  + (f' in {job.result()[1]:.1f} s' if not job.exception() else ' (failed)')))
      lowered.clear()
      # XLA autotunes on the GPU while compiling: no timing until every compile is done.
      concurrent.futures.wait(jobs.values())
      for (variant_name, case), cell in cells.items():
        for batch in args.batches:
          head = {'model': model_name, 'variant': variant_name, 'case': case, 'batch': batch,
                  'dtype': VARIANTS[variant_name].dtype}
          key = (variant_name, case, batch)
          try:
            if isinstance(cell, Exception):
              raise cell
            model, per_batch = cell
            tree = per_batch[batch]
            head.update(scan=model.scan_implementation, quant_kernel=model.quant_implementation,
                        preset=VARIANTS[variant_name].preset,
                        **weight_bytes(tree, DTYPES[VARIANTS[variant_name].dtype]))
            if key in failed:
              raise failed[key]
            compiled, compile_s = jobs[key].result()
            timing = time_forward(compiled, tree, images[batch], args.iters, args.warmup)
            results.append({**head, 'compile_s': compile_s, **timing})
          except Exception as e:  # pylint: disable=broad-except
            results.append({**head, 'error': f'{type(e).__name__}: {e}'})
            traceback.print_exc()
          jobs.pop(key, None)  # frees the executable
          print(_cell_line(results[-1]), flush=True)
          on_cell(report)
  return report


def _progress(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _cell_name(variant: str, case: str = 'default') -> str:
  return variant if case == 'default' else f'{variant} [{case}]'


def _cell_line(r) -> str:
  head = f'{r["model"]:<6} {_cell_name(r["variant"], r["case"]):<17} batch {r["batch"]:>4}: '
  if 'error' in r:
    return head + 'FAILED ' + r['error'][:200]
  return head + (f'{r["median_ms"]:9.3f} ms  {r["images_per_s"]:10.1f} img/s  '
                 f'(compile {r["compile_s"]:.1f} s)')


def table(report) -> str:
  """Latency (median ms) and throughput (img/s) per model and batch, variants as columns."""
  results = report['results']
  variants = list(dict.fromkeys((r['variant'], r['case']) for r in results))
  width = max(18, *(len(_cell_name(*v)) + 2 for v in variants))
  lines = [f'device: {report["device"]}; cells: median ms / images per s']
  for model in dict.fromkeys(r['model'] for r in results):
    head = f'{model:<8}{"batch":>6}' + ''.join(f'{_cell_name(*v):>{width}}' for v in variants)
    lines += ['', head, '-' * len(head)]
    for batch in dict.fromkeys(r['batch'] for r in results if r['model'] == model):
      cells = []
      for v in variants:
        r = next((x for x in results
                  if (x['model'], (x['variant'], x['case']), x['batch']) == (model, v, batch)),
                 None)
        if r is None:
          cells.append('-')
        elif 'error' in r:
          cells.append('FAILED')
        else:
          cells.append(f'{r["median_ms"]:.3f} / {r["images_per_s"]:.0f}')
      lines.append(f'{"":<8}{batch:>6}' + ''.join(f'{c:>{width}}' for c in cells))
  for key, rate in report['outlier_rates'].items():
    lines.append(f'outlier rate {key}: {100 * rate["entries"]:.3f}% of Linear-input entries, '
                 f'{100 * rate["tokens_with_outliers"]:.1f}% of tokens')
  return '\n'.join(lines)


def write_report(report, path: str) -> None:
  """The report so far, written atomically (a stopped run keeps its finished cells)."""
  if path:
    atomic.write_json(path, report)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  report = run(args, on_cell=lambda rep: write_report(rep, args.out))
  print(table(report))
  return report


if __name__ == '__main__':
  report_ = main()
  sys.exit(1 if any('error' in r for r in report_['results']) else 0)
