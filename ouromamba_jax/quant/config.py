"""Quantization specs: what precision each tensor gets, validated once, plus the presets.

A `QuantSpec` is a list of `QuantRule`s (regex over site paths -> `WeightSpec` | `ActSpec` |
None, first applicable match wins, qwix style) and the calibration settings. Site paths are
where the quantized leaf lives in the param tree:

  layers_3/mixer/in_proj/kernel            a Linear weight                    (WeightSpec)
  layers_3/mixer/in_proj/input_quantizer   the input of that Linear           (ActSpec)
  layers_3/mixer/delta_b_quantizer         an SSM tensor of the backward scan (ActSpec)

Choices the paper leaves open are fields with a default and a comment; every spec rejects bad
values at construction with a message that says how to fix them. The named site sets (w4a4, ...)
are in `presets`; the config section that picks one is `run_spec.QuantRunSpec`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Union

import numpy as np

from kernels_pallas.act_quant.config import ActQuantParams, check_bits, check_quantizer_fields

INITS = ('lp', 'minmax')
DOMAINS = ('linear', 'log')
METHODS = ('ouromamba', 'rtn', 'ptq4vm')
# How quantized params compute: 'fake' = float simulation of the integer math, 'int' = integer
# dots; the same logits either way.
MODES = ('fake', 'int')


def _check_common(owner: str, lp, n_grid, init) -> None:
  if not lp > 0:
    raise ValueError(f'{owner}.lp (exponent of the clipping-search error) must be > 0, got {lp!r}.')
  if not isinstance(n_grid, (int, np.integer)) or n_grid < 1:
    raise ValueError(f'{owner}.n_grid (number of clipping candidates) must be an int >= 1, '
                     f'got {n_grid!r}.')
  if init not in INITS:
    raise ValueError(f'{owner}.init must be one of {INITS}, got {init!r}.')


def weight_qmax(bits: int) -> int:
  """The largest weight code: the narrow grid ±(2^(bits-1) - 1) leaves out -2^(bits-1)."""
  return 2 ** (bits - 1) - 1


@dataclasses.dataclass(frozen=True)
class WeightSpec:
  """Symmetric per-output-channel weights on the narrow grid ±(2^(bits-1) - 1)."""
  bits: int = 4
  lp: float = 2.4        # scale search minimises mean |w - Q(w)|^lp (official: 2.4)
  n_grid: int = 100      # candidates m_j = R * j / n_grid, j = 1..n_grid, R = max|w| per channel
  init: str = 'lp'       # 'lp' search, or 'minmax' (s = R / qmax, the RTN baseline)

  def __post_init__(self):
    check_bits('WeightSpec', 'bits', self.bits)
    _check_common('WeightSpec', self.lp, self.n_grid, self.init)

  @property
  def qmax(self) -> int:
    return weight_qmax(self.bits)

  def describe(self) -> str:
    return f'W{self.bits} per-channel sym ({self.init})'


@dataclasses.dataclass(frozen=True)
class ActSpec:
  """An activation site: static per-step inlier scale + dynamic outlier channels.

  (B, L, C) inputs get one inlier scale per time step; any other shape (A: (Di, N), D: (Di,))
  is one static step over all its elements. The fields bits .. std_ddof are what the act_quant
  op computes (`kernel_params`, validated by the op's own checks); lp .. domain are the
  library's calibration settings.
  """
  bits: int = 8
  symmetric: bool = True   # False: unsigned grid [0, 2^bits - 1] with a static zero point (Δ)
  outliers: str = 'int'    # 'int': dynamic per-token scale at outlier_bits; 'float': kept in
                           # float (the paper's O16); 'none': no detection (plain static quant)
  outlier_bits: int = 8
  k: float = 3.0           # outlier threshold mu + k * sigma of |x_t| over channels (Δ: 4)
  n_refresh: int = 10      # the outlier set is reset at t = 0, n_refresh, 2 n_refresh, ...
  trigger: str = 'sample'  # detection runs when S_D(t) > S_I(t) ... 'sample': per sample;
                           # 'batch': any sample of the batch at step t; 'official': any sample
                           # and any refresh window at the same in-window offset (OM's `.any()`)
  std_ddof: int = 1        # 1: unbiased std over channels (official torch.std); 0: population
  lp: float = 2.4
  n_grid: int = 100
  init: str = 'lp'         # 'lp' search or 'minmax' (static max, the RTN baseline)
  domain: str = 'linear'   # 'log': the grid is over log(-x), returned as -exp (A = -exp(A_log):
                           # its entries span -1..-19, and a linear 4-bit grid zeroes the
                           # slowly decaying states; RESULTS.md). Needs an asymmetric grid.

  def __post_init__(self):
    check_quantizer_fields('ActSpec', self)
    _check_common('ActSpec', self.lp, self.n_grid, self.init)
    if self.outliers == 'int' and self.outlier_bits < self.bits:
      raise ValueError(f'ActSpec.outlier_bits ({self.outlier_bits}) is below the inlier bits '
                       f'({self.bits}): outliers are the largest values and would get a coarser '
                       'grid than the inliers; set outlier_bits >= bits.')
    if self.domain not in DOMAINS:
      raise ValueError(f'ActSpec.domain must be one of {DOMAINS}, got {self.domain!r}.')
    if self.domain == 'log' and self.symmetric:
      raise ValueError("ActSpec.domain='log' quantizes log(-x) on an asymmetric grid; set "
                       'symmetric=False.')

  @property
  def kernel_params(self) -> ActQuantParams:
    """What the quantizer computes at run time: the act_quant op's parameters."""
    return ActQuantParams(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(ActQuantParams)})

  @property
  def qmin(self) -> int:
    return self.kernel_params.qmin

  @property
  def qmax(self) -> int:
    return self.kernel_params.qmax

  @property
  def outlier_qmin(self) -> int:
    return self.kernel_params.outlier_qmin

  @property
  def outlier_qmax(self) -> int:
    return self.kernel_params.outlier_qmax

  def describe(self) -> str:
    grid = 'sym' if self.symmetric else 'asym'
    if self.outliers == 'none':
      out = 'no outliers'
    else:
      out = (f'outliers {"O" + str(self.outlier_bits) if self.outliers == "int" else "float"} '
             f'k={self.k:g} refresh={self.n_refresh} trigger={self.trigger}')
    domain = ' log-domain' if self.domain == 'log' else ''
    return f'A{self.bits} {grid}{domain} static ({self.init}), {out}'


Spec = Union[WeightSpec, ActSpec, None]


@dataclasses.dataclass(frozen=True)
class QuantRule:
  """`pattern` (re.fullmatch over a site path) -> spec; None keeps the site in float."""
  pattern: str
  spec: Spec

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f'QuantRule pattern {self.pattern!r} is not a valid regex: {e}') from e
    if self.spec is not None and not isinstance(self.spec, (WeightSpec, ActSpec)):
      raise ValueError(f'QuantRule({self.pattern!r}).spec must be a WeightSpec, an ActSpec or '
                       f'None, got {type(self.spec).__name__}.')

  def applies_to(self, path: str, kind: str) -> bool:
    """kind: 'weight' or 'act'. A None spec applies to both."""
    if self.spec is not None and (kind == 'weight') != isinstance(self.spec, WeightSpec):
      return False
    return re.fullmatch(self.pattern, path) is not None


@dataclasses.dataclass(frozen=True)
class CalibSpec:
  """Block-wise reconstruction (official values: 10 epochs, AdamW 5e-4, wd 1e-5, clip 2.0)."""
  epochs: int = 10
  micro_batch: int = 64       # official: train-batch 64 (one step per epoch on 64 images)
  lr_weight: float = 1e-2     # weight step sizes (official: 5e-4 with scale_space 'linear')
  lr_act: float = 1e-2        # activation and SSM-tensor step sizes (official: 5e-4, linear)
  lr_smooth: float = 1e-2     # PTQ4VM smoothing factors
  weight_decay: float = 1e-5
  grad_clip: float = 2.0
  keep_better: bool = True    # keep the initial scales of a block if training made its loss worse
  # 'linear': AdamW on the step sizes themselves (official). Adam moves each value by ~lr per
  # step whatever its size, so 8-bit steps of ~1e-3 can be overshot at lr 5e-4; 'log': AdamW on
  # log(step), i.e. relative updates of ~lr per step (use lr ~1e-2 there). Default 'log' with
  # lr 1e-2: on the testbed (W4A4, 16 Gen images, 10 epochs) it reached a lower summed block
  # loss (3.06 vs 3.27) and higher top-1 (73.4 vs 72.2 on 500 test images) than the official
  # 'linear' lr 5e-4 (RESULTS.md).
  scale_space: str = 'log'
  smooth_alpha: float = 0.5   # PTQ4VM: s_c = act_max^alpha / w_max^(1 - alpha)

  def __post_init__(self):
    if not isinstance(self.epochs, (int, np.integer)) or self.epochs < 0:
      raise ValueError(f'CalibSpec.epochs must be an int >= 0, got {self.epochs!r}.')
    if not isinstance(self.micro_batch, (int, np.integer)) or self.micro_batch < 1:
      raise ValueError(f'CalibSpec.micro_batch must be an int >= 1, got {self.micro_batch!r}.')
    for name in ('lr_weight', 'lr_act', 'lr_smooth', 'weight_decay'):
      if not getattr(self, name) >= 0:
        raise ValueError(f'CalibSpec.{name} must be >= 0, got {getattr(self, name)!r}.')
    if not self.grad_clip > 0:
      raise ValueError(f'CalibSpec.grad_clip must be > 0, got {self.grad_clip!r} (0 clips every '
                       'update to zero, so nothing trains; set epochs=0 to skip training).')
    if self.scale_space not in ('linear', 'log'):
      raise ValueError(f"CalibSpec.scale_space must be 'linear' or 'log', got {self.scale_space!r}.")
    if not 0 <= self.smooth_alpha <= 1:
      raise ValueError(f'CalibSpec.smooth_alpha must be in [0, 1], got {self.smooth_alpha!r}.')


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  name: str
  rules: tuple[QuantRule, ...]
  calib: CalibSpec = CalibSpec()

  def __post_init__(self):
    if not self.rules:
      raise ValueError(f'QuantSpec {self.name!r} has no rules; nothing would be quantized.')
    object.__setattr__(self, 'rules', tuple(self.rules))

  def to_json(self) -> dict[str, Any]:
    def spec_json(s):
      if s is None:
        return None
      return {'type': type(s).__name__, **dataclasses.asdict(s)}
    return {'name': self.name, 'calib': dataclasses.asdict(self.calib),
            'rules': [{'pattern': r.pattern, 'spec': spec_json(r.spec)} for r in self.rules]}
