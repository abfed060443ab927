"""Block-wise reconstruction (OuroMamba / PTQ4VM calibration loop).

For each block i in order (`models.blockwise.pieces`: Vim's blocks, VMamba's blocks of every
stage, its downsamples kept float between them):
  1. FP targets: the FP block on the FP stream (hidden, residual), with `Recorder`s at the
     planned activation sites so the same pass yields the calibration activations.
  2. Initial quantizers: lp(2.4) (or min-max) static scales from those activations.
  3. Training: the quantized block is fed the *quantized* stream (outputs of the already
     quantized blocks 0..i-1); loss = mean over tokens of 1 - cos(mixer output, FP target);
     AdamW on every step size (weights, Linear inputs, SSM tensors; PTQ4VM smoothing too),
     global-norm clip, `epochs` passes over the calibration set in micro-batches.
     With `keep_better`, a block whose loss got worse keeps its initial scales.
  4. The block is frozen to integer codes, both streams advance, and the finished blocks are
     snapshotted (`quantized_checkpoints.SnapshotFile`, when given), so a killed run resumes at
     the next block (earlier blocks are replayed, not recalibrated; a finished run is only
     replayed); a SIGTERM then stops the run after the block in progress (`stop_request`).

Only the mixer output enters the loss (official; VMamba: its block's residual branches, output -
input); the residual stream is propagated exactly.
A block whose float params, calibration activations or kept loss are not finite stops the run
(`NonFiniteCalibrationError`, naming the block and the site) before that block is snapshotted.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from ouromamba_jax import distributed
from ouromamba_jax import progress
from ouromamba_jax import stop_request
from ouromamba_jax.io import integrity
from ouromamba_jax.models import blockwise
from ouromamba_jax.models import registry
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant.config import CalibSpec
from ouromamba_jax.quant.rules import Site

@dataclasses.dataclass
class BlockResult:
  block: int
  loss_init: float        # reconstruction loss with the initial (searched) scales
  loss_final: float       # after training (= loss_init when nothing was trained)
  kept: str               # 'trained' | 'init' (training made it worse) | 'untrained' | 'float'
  steps: int
  seconds: float
  restored: bool = False  # calibrated by an earlier (killed) process, restored from the snapshot


# ----------------------------------------------------------------------------------------------
# Running pieces of the model.

@functools.partial(jax.jit, static_argnums=(0, 1))
def _capture_run(block, paths: tuple[str, ...], layer, hidden, residual):
  apply = lambda tree, h, r: block.apply({'params': tree}, h, r)
  return rewrite.capture(apply, layer, paths, hidden, residual)


def _clamped_norm(x, eps: float):
  """max(||x||, eps) along the last axis, written as sqrt(max(sum x^2, eps^2)) so that an
  all-zero row (a token whose 4-bit codes all land on zero) has gradient 0, not 0 * inf = NaN
  (the derivative of sqrt at 0)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))


def token_losses(out, target, eps: float = 1e-8):
  """1 - cos(out, target) along channels (torch cosine_similarity), per token."""
  out = out.astype(jnp.float32)
  target = target.astype(jnp.float32)
  dot = jnp.sum(out * target, axis=-1)
  norms = _clamped_norm(out, eps) * _clamped_norm(target, eps)
  return 1.0 - dot / norms


def cosine_loss(out, target, eps: float = 1e-8):
  """mean over tokens of 1 - cos(out, target) along channels."""
  return jnp.mean(token_losses(out, target, eps))


def micro_batches(n: int, size: int) -> list[slice]:
  return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# Trainable / frozen split of a quantized layer.

_LABELS = {'scale': 'weight', 'inlier_scale': 'act', 'smooth': 'smooth'}


def _label(path) -> Optional[str]:
  last = path[-1] if path else None
  if isinstance(last, jax.tree_util.GetAttrKey):
    return _LABELS.get(last.name)
  return None


def split_trainable(tree):
  """(trainable, frozen): the same structure with None where a leaf belongs to the other."""
  keep = lambda want: (lambda p, x: x if (_label(p) is not None) == want else None)
  return (jax.tree_util.tree_map_with_path(keep(True), tree),
          jax.tree_util.tree_map_with_path(keep(False), tree))


def merge_trainable(trainable, frozen):
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                      is_leaf=lambda x: x is None)


def trainable_labels(trainable):
  return jax.tree_util.tree_map_with_path(lambda p, _: _label(p), trainable)


@functools.lru_cache(maxsize=None)
def make_optimizer(calib: CalibSpec):
  adamw = lambda lr: optax.adamw(lr, weight_decay=calib.weight_decay)
  return optax.chain(
      optax.clip_by_global_norm(calib.grad_clip),
      optax.multi_transform({'weight': adamw(calib.lr_weight), 'act': adamw(calib.lr_act),
                             'smooth': adamw(calib.lr_smooth)}, trainable_labels))


def _to_variables(trainable, log_space: bool):
  """Optimisation variables: the step sizes, or their logs (CalibSpec.scale_space)."""
  if not log_space:
    return trainable
  return jax.tree.map(lambda v: jnp.log(jnp.maximum(v, 1e-30)), trainable)


def _from_variables(variables, log_space: bool):
  return jax.tree.map(jnp.exp, variables) if log_space else variables


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _train_step(block, optimizer, log_space, variables, frozen, opt_state, hidden, residual,
                target):
  def loss_fn(v):
    layer = merge_trainable(_from_variables(v, log_space), frozen)
    return cosine_loss(block.apply({'params': layer}, hidden, residual)[0], target)
  loss, grads = jax.value_and_grad(loss_fn)(variables)
  updates, opt_state = optimizer.update(grads, opt_state, variables)
  return optax.apply_updates(variables, updates), opt_state, loss


@functools.lru_cache(maxsize=None)
def _sharded_train_step(block, optimizer, log_space, mesh):
  """_train_step with the micro-batch's rows split over `mesh` (data-parallel: every device
  differentiates its rows' share of the mean loss, the shares are summed, so the update is the
  one-device update up to float rounding). Rows of weight 0 are padding."""
  data, rep = PartitionSpec(distributed.DATA_AXIS), PartitionSpec()

  def local(variables, frozen, hidden, residual, target, weight):
    count = jax.lax.psum(jnp.sum(weight), distributed.DATA_AXIS) * target.shape[1]

    def loss_fn(v):
      layer = merge_trainable(_from_variables(v, log_space), frozen)
      losses = token_losses(block.apply({'params': layer}, hidden, residual)[0], target)
      return jnp.sum(losses * weight[:, None]) / count

    loss, grads = jax.value_and_grad(loss_fn)(variables)
    return jax.lax.psum((loss, grads), distributed.DATA_AXIS)

  grads_fn = jax.shard_map(local, mesh=mesh, in_specs=(rep, rep, data, data, data, data),
                           out_specs=rep, check_vma=False)

  def step(variables, frozen, opt_state, hidden, residual, target, weight):
    loss, grads = grads_fn(variables, frozen, hidden, residual, target, weight)
    updates, opt_state = optimizer.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state, loss

  return jax.jit(step)


def _train_block(block, optimizer, log_space, variables, frozen, stream, targets, batches,
                 epochs: int):
  """`epochs` passes of AdamW over the micro-batches -> the trained variables (local arrays).
  With several devices (of one or several processes) each micro-batch is split over all of
  them; one device runs the plain jitted step."""
  mesh = distributed.data_mesh()
  opt_state = optimizer.init(variables)
  if mesh.size == 1:
    step = lambda v, o, s: _train_step(block, optimizer, log_space, v, frozen, o, stream[0][s],
                                       stream[1][s], targets[s])
  else:
    sharded = _sharded_train_step(block, optimizer, log_space, mesh)
    frozen_all = distributed.replicate(frozen, mesh)
    variables, opt_state = distributed.replicate((variables, opt_state), mesh)

    def step(v, o, s):
      rows = s.stop - s.start
      pad = -rows % mesh.size
      padded = [jnp.pad(x[s], [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                for x in (stream[0], stream[1], targets)]
      weight = np.concatenate([np.ones(rows, np.float32), np.zeros(pad, np.float32)])
      return sharded(v, frozen_all, o, *(distributed.shard_rows(x, mesh) for x in padded),
                     distributed.shard_rows(weight, mesh))
  for _ in range(epochs):
    for s in batches:
      variables, opt_state, _ = step(variables, opt_state, s)
  return variables if mesh.size == 1 else distributed.local_copy(variables)


# ----------------------------------------------------------------------------------------------
# Non-finite values: a NaN scale quantizes everything to NaN, so stop at the first one.

class NonFiniteCalibrationError(integrity.NonFiniteError):
  """Calibration met NaN/Inf (params, activations or loss) in a block."""


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def first_nonfinite_leaf(tree) -> Optional[str]:
  """'a/b/c' path of the first float leaf of `tree` holding NaN or Inf, or None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if integrity.count_nonfinite(jax.device_get(leaf)):
      return '/'.join(_key_name(k) for k in path)
  return None


def _check_block(i: int, depth: int, layer_fp, stats, loss: Optional[float] = None,
                 qlayer=None, what: str = '', name: str = '') -> None:
  """Raises NonFiniteCalibrationError for the first non-finite thing of block i."""
  where = f'block {i + 1}/{depth} ({name or f"layers_{i}"})'
  bad = first_nonfinite_leaf(layer_fp)
  if bad:
    raise NonFiniteCalibrationError(
        f'{where}: float param {bad} holds NaN/Inf; the float checkpoint is damaged: load it '
        'with load_checkpoint, which names the bad tensor, or export it again.')
  for path, x in (stats or {}).items():
    if integrity.count_nonfinite(jax.device_get(x)):
      raise NonFiniteCalibrationError(
          f'{where}: calibration activations at site {path} hold NaN/Inf; check that the '
          'calibration images (quant.calib_source) are finite and normalised.')
  if loss is not None and not math.isfinite(loss):
    site = first_nonfinite_leaf(qlayer)
    culprit = f'quantizer {site} holds NaN/Inf' if site else 'every quantizer is finite'
    raise NonFiniteCalibrationError(
        f'{where}: {what} reconstruction loss is {loss} ({culprit}); lower quant.lr_weight/'
        'lr_act, use quant.scale_space=log, or keep quant.keep_better=True.')


# ----------------------------------------------------------------------------------------------

def fingerprint(model, params, images, plan, calib, method) -> str:
  """Identifies a calibration run so a snapshot is only resumed by the same run."""
  h = hashlib.sha256()
  fields = {**registry.architecture(model), 'dtype': str(model.dtype)}
  h.update(json.dumps({'model': fields, 'method': method, 'calib': dataclasses.asdict(calib),
                       'plan': {p: repr(s) for p, s in sorted(plan.items())}},
                      sort_keys=True).encode())
  h.update(np.asarray(jax.device_get(images), np.float32).tobytes())
  for leaf in jax.tree.leaves(params):
    h.update(np.asarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()


class _Progress:
  """One line per block, with an ETA over the remaining blocks that leaves compilation out:
  the first block this process calibrates compiles the block's capture, scale search and
  training step (every later block reuses them), so the rate is measured from its end."""

  def __init__(self, log: progress.Log, n_blocks: int, first_block: int,
               clock: Callable[[], float] = time.time):
    self.log, self.n_blocks, self.clock = log, n_blocks, clock
    self.t0 = clock()
    self.throughput = progress.Throughput(n_blocks, first_block, clock)
    self.announced = False

  def compiling(self, block: int) -> None:
    """Called before each quantized block; says so before the first, which compiles."""
    if not self.announced:
      self.announced = True
      self.log(f'[quant] block {block + 1}/{self.n_blocks}: compiling the block\'s capture, scale '
               'search and training step (the later blocks reuse them) ...')

  def block_done(self, block: int, what: str) -> None:
    compiled = not self.throughput.started
    self.throughput.advance(1)
    eta_text = ''
    if block + 1 < self.n_blocks:
      left = self.throughput.seconds_left()
      eta_text = ('ETA after the next block (this one compiled)' if compiled else
                  f'ETA {progress.format_seconds(left) if left is not None else "?"}')
    self.log(f'[quant] block {block + 1}/{self.n_blocks} {what} | elapsed '
             f'{progress.format_seconds(self.clock() - self.t0)}'
             + (f', {eta_text}' if eta_text else ''))


def reconstruct_blocks(model, params, images, plan: Mapping[str, Any],
                       sites: Sequence[Site], calib: CalibSpec, *, smoothing: bool = False,
                       snapshot=None, method: str = 'ouromamba',
                       log: Optional[progress.Log] = None):
  """Quantizes every block of `params` per `plan`. Returns (params with quantized blocks,
  list of BlockResult). Sites outside the blocks (`blockwise.piece_of` None) are left to the
  caller. With a snapshot, a SIGTERM finishes the block in progress, saves it and stops."""
  with stop_request.on_sigterm(enabled=bool(snapshot)):
    return _reconstruct_blocks(model, params, images, plan, sites, calib, smoothing=smoothing,
                               snapshot=snapshot, method=method, log=log)


def _reconstruct_blocks(model, params, images, plan, sites, calib, *, smoothing, snapshot,
                        method, log):
  log = log or progress.log_info
  images = jnp.asarray(images)
  n_images = images.shape[0]
  batches = micro_batches(n_images, calib.micro_batch)
  pieces = blockwise.pieces(model)
  optimizer = make_optimizer(calib)
  log_space = calib.scale_space == 'log'

  def run_stream(module, layer, hidden, residual, run=blockwise.run_block):
    outs = [run(module, layer, hidden[s], residual[s]) for s in batches]
    return (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs]))

  def after(piece, fp_stream, q_stream):
    """Both streams through the float piece after a block (VMamba's downsample), if any."""
    if piece.after is None:
      return fp_stream, q_stream
    tree = rewrite.get_path(params, piece.after_name)
    return tuple(run_stream(piece.after, tree, *stream, run=blockwise.run_after)
                 for stream in (fp_stream, q_stream))

  def eval_loss(block, layer, hidden, residual, target):
    total = sum(float(cosine_loss(blockwise.run_block(block, layer, hidden[s], residual[s])[0],
                                  target[s]))
                * (s.stop - s.start) for s in batches)
    return total / n_images

  embedded = [blockwise.embed(model, params, images[s]) for s in batches]
  fp_stream = q_stream = tuple(jnp.concatenate(parts) for parts in zip(*embedded))

  run_id = fingerprint(model, params, images, plan, calib, method) if snapshot else ''
  done_layers, results, start = {}, [], 0
  saved = snapshot.load() if snapshot else None
  if saved is not None:
    done_layers, info = saved
    if info.get('run_id') != run_id:
      raise ValueError(f'{snapshot.path} belongs to a different calibration run (other model, '
                       'params, images or settings). Delete it or use another workdir.')
    start = int(info['next_block'])
    results = [dataclasses.replace(BlockResult(**r), restored=True) for r in info['results']]
    log(f'[quant] resuming from {snapshot.path}: blocks 0..{start - 1} done, replaying them')
    for piece in pieces[:start]:
      fp_stream = run_stream(piece.module, rewrite.get_path(params, piece.name), *fp_stream)
      q_stream = run_stream(piece.module, rewrite.get_path(done_layers, piece.name), *q_stream)
      fp_stream, q_stream = after(piece, fp_stream, q_stream)

  depth = len(pieces)
  block_lines = _Progress(log, depth, start)
  by_block: dict[int, list[Site]] = {}
  for site in sites:
    index = blockwise.piece_of(model, site.path)
    if index is not None and site.path in plan:
      by_block.setdefault(index, []).append(site)

  for i in range(start, depth):
    t_block = time.time()
    piece = pieces[i]
    block, name = piece.module, piece.name
    layer_fp = rewrite.get_path(params, name)
    local_sites = [dataclasses.replace(s, path=rewrite.relative(s.path, name),
                                       linear=s.linear and rewrite.relative(s.linear, name))
                   for s in by_block.get(i, [])]
    if not local_sites:
      fp_stream = run_stream(block, layer_fp, *fp_stream)
      q_stream = run_stream(block, layer_fp, *q_stream)
      done_layers = rewrite.set_path(done_layers, name, layer_fp)
      results.append(BlockResult(i, 0.0, 0.0, 'float', 0, time.time() - t_block))
    else:
      block_lines.compiling(i)
      local_plan = {s.path: plan[f'{name}/{s.path}'] for s in local_sites}
      targets, stats = _capture_block(block, layer_fp, fp_stream, local_sites, batches)
      _check_block(i, depth, layer_fp, stats, name=name)
      qlayer = _init_layer(tuple(sorted(local_plan.items())), tuple(local_sites), calib,
                           smoothing, layer_fp, stats)
      del stats
      loss_init = eval_loss(block, qlayer, *q_stream, targets[0])
      _check_block(i, depth, {}, {}, loss_init, qlayer, 'the initial', name)
      trainable, frozen = split_trainable(qlayer)
      n_steps = calib.epochs * len(batches) if jax.tree.leaves(trainable) else 0
      loss_final, kept = loss_init, 'untrained'
      if n_steps:
        variables = _train_block(
            block, optimizer, log_space, _to_variables(trainable, log_space), frozen, q_stream,
            targets[0], batches, calib.epochs)
        trained = merge_trainable(_from_variables(variables, log_space), frozen)
        loss_final = eval_loss(block, trained, *q_stream, targets[0])
        if calib.keep_better and not loss_final <= loss_init:
          kept = 'init'
        else:
          qlayer, kept = trained, 'trained'
          _check_block(i, depth, {}, {}, loss_final, qlayer, 'the trained', name)
      # Freeze to integer codes (bit-identical outputs, int4 packed: small snapshots).
      qlayer = rewrite.set_mode(qlayer, 'fake')
      q_stream = run_stream(block, qlayer, *q_stream)
      fp_stream = targets
      done_layers = rewrite.set_path(done_layers, name, qlayer)
      results.append(BlockResult(i, float(loss_init), float(loss_final), kept, n_steps,
                                 time.time() - t_block))
    fp_stream, q_stream = after(piece, fp_stream, q_stream)
    r = results[-1]
    block_lines.block_done(i, f'loss {r.loss_init:.6f} -> {r.loss_final:.6f} ({r.kept}, '
                           f'{r.steps} steps, {r.seconds:.1f} s)')
    if snapshot:
      snapshot.save(done_layers, {
          'run_id': run_id, 'next_block': i + 1,
          'results': [dataclasses.asdict(x) for x in results]})
      if stop_request.requested() and i + 1 < depth:
        raise stop_request.StopRequested(
            f'calibration stopped by SIGTERM after block {i + 1}/{depth}; the finished blocks '
            f'are in {snapshot.path}; rerun the same command to resume.')

  qparams = dict(rewrite.as_dict(params))
  for piece in pieces:
    qparams = rewrite.set_path(qparams, piece.name, rewrite.get_path(done_layers, piece.name))
  return qparams, results


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_layer(plan_items, local_sites, calib, smoothing, layer_fp, stats):
  """Initial quantizers of one block (jitted: the lp searches of all its sites compile once
  per block structure instead of running op by op)."""
  smooth = smoothing_for_sites(layer_fp, local_sites, stats, calib) if smoothing else {}
  return rewrite.rewrite(layer_fp, dict(plan_items), local_sites, stats, smooth)


def _capture_block(block, layer_fp, fp_stream, local_sites, batches):
  """FP block outputs (targets, residual) and the planned activation-site inputs."""
  act_sites = [s for s in local_sites if s.kind != 'weight']
  paths = tuple(s.path for s in act_sites)
  outs, parts = [], {p: [] for p in paths}
  for s in batches:
    out, captured = _capture_run(block, paths, layer_fp, fp_stream[0][s], fp_stream[1][s])
    outs.append(out)
    for p in paths:
      parts[p].append(captured[p])
  stats = {}
  for site in act_sites:
    # Per-tensor sites (A, D) see the same tensor in every micro-batch.
    stats[site.path] = (parts[site.path][0] if site.layout == 'tensor'
                        else jnp.concatenate(parts[site.path]))
  targets = (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs]))
  return targets, stats


def smoothing_for_sites(layer_fp, local_sites, stats, calib: CalibSpec):
  """PTQ4VM smoothing vectors for Linears whose weight and input are both quantized."""
  weights = {s.linear: s.path for s in local_sites if s.kind == 'weight'}
  smooth = {}
  for site in local_sites:
    if site.kind == 'input' and site.linear in weights:
      x = stats[site.path]
      kernel = rewrite.get_path(layer_fp, weights[site.linear])
      if site.layout == qtypes.STACKED:  # (N, K, L, C) inputs, (K, out, in) weights
        act_max = jnp.max(jnp.abs(x), axis=(0, 2))
        smooth[site.linear] = jax.vmap(rewrite.smoothing_factors, (0, 0, None))(
            act_max, jnp.swapaxes(kernel, 1, 2), calib.smooth_alpha)
      else:
        act_max = jnp.max(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0)
        smooth[site.linear] = rewrite.smoothing_factors(act_max, kernel, calib.smooth_alpha)
  return smooth
