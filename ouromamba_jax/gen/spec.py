"""GenSpec: every OuroMamba-Gen setting, with its default and meaning (the only place of both).

Paper values where the paper gives them (128 images, 1000 iterations, 5x5 neighbourhood,
K = 12, MAE output loss); everything else is our choice, marked [ours]. The loss fields define
the objective (`objective`), the pixel fields the optimiser (`optimize`); the bookkeeping fields
are read by the `generate` stage only.
"""
from __future__ import annotations

import dataclasses

from ouromamba_jax.spec_fields import field

# Fields that do not change the generated images (so they may differ on resume).
OPERATIONAL_FIELDS = frozenset({'log_every', 'checkpoint_every', 'keep_checkpoints', 'num_devices',
                                'remat', 'scan_implementation', 'readout_implementation',
                                'grid_columns', 'quality_check', 'judges'})


@dataclasses.dataclass(frozen=True)
class GenSpec:
  """OuroMamba-Gen (mode `generate`): data-free synthetic calibration images."""
  num_images: int = field(128, 'synthetic calibration set size (paper Fig. 9a)')
  iterations: int = field(1000, 'Adam steps per image (paper)')
  images_per_step: int = field(32, 'images optimised together (memory knob); divides num_images')
  num_devices: int = field(0, 'data-parallel over this many devices (0 = all, of every process)')
  remat: bool = field(True, 'recompute block activations in the backward pass')
  scan_implementation: str = field(
      '', "'' = the model's scan; a scan name overrides it for Gen only")
  # Patched hidden state h_p(τ) = Σ_{k in p×p window of τ} w_k h(k)
  neighbourhood: int = field(5, 'p (odd): 5 = paper ablation best, 3 = official code, 1 = off')
  state_weighting: str = field(
      'delta', 'delta: w_k from channel-mean Δ(k) | uniform: w_k = 1 (ablation)')
  delta_normalization: str = field(
      'minmax', "over each image's patch tokens: minmax | mean | none [ours: per image]")
  feature: str = field(
      'readout', 'patch feature: readout = C_τ·h_p(τ) (B,P,Di) | state = flat h_p [ours]')
  readout_implementation: str = field(
      '', "readout: '' = default (triton on GPU: 2.1x faster, no h_p in memory; else xla) | xla | "
      "triton")
  # Contrastive loss L_C (InfoNCE over the patches of an image)
  contrastive_weight: float = field(1.0, '0 disables L_C')
  num_positives: int = field(12, 'K most cosine-similar patches as positives (paper Fig. 9b)')
  temperature: float = field(0.1, 'InfoNCE temperature [ours]')
  loss_blocks: tuple[int, ...] = field(
      (), 'blocks feeding L_C / L_PSE; () = all (L_C averaged, L_PSE summed); VMamba: flat '
      'indices over the stages, () = every block whose grid fits the window (gen.ss2d); '
      'MambaVision: indices into mixer_blocks(), () = every mixer that fits (gen.windows)')
  # Output loss L_O
  output_loss: str = field('mae', 'mae: Σ_c |softmax - onehot| (paper: "MAE") | ce')
  output_weight: float = field(1.0, 'λ in L = L_C + λ·L_O')
  # PSAQ-ViT patch-similarity entropy (ablation, Table 6); same patch features as L_C
  pse_weight: float = field(0.0, '0 disables L_PSE')
  pse_bandwidth: float = field(0.01, 'Gaussian KDE bandwidth (PSAQ-ViT)')
  pse_grid_points: int = field(10, 'KDE evaluation points (PSAQ-ViT)')
  # Pixel optimisation [ours: PSAQ-ViT-style Adam]
  init_std: float = field(1.0, 'initial N(0, init_std) noise in the normalised space')
  lr: float = field(0.2, 'Adam peak learning rate on the pixels')
  b1: float = field(0.5, 'Adam beta1')
  b2: float = field(0.9, 'Adam beta2')
  schedule: str = field('cosine', 'cosine (with warmup) | constant')
  warmup_fraction: float = field(0.1, 'linear warmup over this fraction of the iterations')
  jitter: int = field(0, 'random roll by up to ±jitter pixels per step (0 = off)')
  flip: bool = field(False, 'random horizontal flip per step')
  clip_pixels: bool = field(True, 'keep pixels inside the valid [0, 1] image box after each step')
  # The model's input normalisation: the pixel box and the PNG colours
  mean: tuple[float, ...] = field(
      (), "per-channel input mean; () = the dataset's (ouromamba_jax.data.<name>.MEAN)")
  std: tuple[float, ...] = field(
      (), "per-channel input std; () = the dataset's (ouromamba_jax.data.<name>.STD)")
  grid_columns: int = field(16, 'columns of the PNG grid')
  # Bookkeeping (the `generate` stage)
  log_every: int = field(50, 'progress line (absl) every this many steps')
  checkpoint_every: int = field(
      100, 'Orbax checkpoint of the group in progress (0 = only finished groups)')
  keep_checkpoints: int = field(2, 'Orbax checkpoints kept')
  quality_check: bool = field(True, 'FP top-1 agreement with the targets, synthetic vs noise')
  judges: str = field(
      '', "comma-separated bundled models (checkpoints.BUNDLED) that also score the quality "
      "check's images: do other models see the targets? '' = none [ours]")

  def __post_init__(self):
    object.__setattr__(self, 'loss_blocks', tuple(int(b) for b in self.loss_blocks))
    object.__setattr__(self, 'mean', tuple(float(v) for v in self.mean))
    object.__setattr__(self, 'std', tuple(float(v) for v in self.std))
    if self.judges and not self.quality_check:
      raise ValueError(f'gen.judges={self.judges!r} scores the quality check, which '
                       'gen.quality_check=False turns off; set one or clear the other.')

  @property
  def judge_names(self) -> tuple[str, ...]:
    """gen.judges as names, in order, blanks dropped."""
    return tuple(n.strip() for n in self.judges.split(',') if n.strip())

  @property
  def uses_states(self) -> bool:
    return self.contrastive_weight != 0 or self.pse_weight != 0

  def blocks(self, depth: int) -> tuple[int, ...]:
    return self.loss_blocks or tuple(range(depth))

  def defining_fields(self) -> dict:
    """The fields that change the generated images (a resume must keep them)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL_FIELDS}
