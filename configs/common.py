"""Config pieces shared by every experiment file (big_vision style: configs are code).

Each `*_config()` returns one section; experiment files (configs/vim_*.py) assemble them and
override what differs. Every choice the paper leaves open is a named field with a comment.
"""
from __future__ import annotations

import ml_collections as mlc


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
  """The testbed recipe (mode `train`)."""
  c = mlc.ConfigDict()
  c.epochs = 60
  c.batch_size = 256
  c.train_images = 0                 # 0 = the whole training split, else a seeded random subset
  c.learning_rate = 1e-3             # peak AdamW lr
  c.warmup_epochs = 3.0
  c.final_lr_ratio = 0.01            # cosine decays to learning_rate * this
  c.weight_decay = 0.05
  c.grad_clip = 1.0
  c.label_smoothing = 0.1
  c.crop_padding = 4                 # random crop with zero padding
  c.horizontal_flip = True
  c.compute_dtype = 'bfloat16'       # params stay fp32
  c.eval_every_epochs = 5
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.max_seconds = 0.0                # > 0: stop (with a checkpoint) after this long; rerun to resume
  return c


def gen_config() -> mlc.ConfigDict:
  """OuroMamba-Gen (mode `generate`): data-free synthetic calibration images.

  Paper values where the paper gives them (128 images, 1000 iterations, 5x5 neighbourhood,
  K = 12, MAE output loss); everything else is our choice, marked [ours].
  """
  c = mlc.ConfigDict()
  c.num_images = 128                 # synthetic calibration set size (paper Fig. 9a)
  c.iterations = 1000                # Adam steps per image (paper)
  c.images_per_step = 32             # images optimised together (memory knob); divides num_images
  c.num_devices = 0                  # data-parallel over this many local devices (0 = all)
  c.remat = True                     # recompute block activations in the backward pass
  c.scan_implementation = ''         # '' = the model's scan; a scan name overrides it for Gen only
  # Patched hidden state h_p(τ) = Σ_{k in p×p window of τ} w_k h(k)
  c.neighbourhood = 5                # p (odd): 5 = paper ablation best, 3 = official code, 1 = off
  c.state_weighting = 'delta'        # delta: w_k from channel-mean Δ(k) | uniform: w_k = 1 (ablation)
  c.delta_normalization = 'minmax'   # over each image's patch tokens: minmax | mean | none [ours: per image]
  c.feature = 'readout'              # patch feature: readout = C_τ·h_p(τ) (B,P,Di) | state = flat h_p [ours]
  c.readout_implementation = ''      # readout: '' = default (triton on GPU: 2.1x faster, no h_p in memory; else xla) | xla | triton
  # Contrastive loss L_C (InfoNCE over the patches of an image)
  c.contrastive_weight = 1.0         # 0 disables L_C
  c.num_positives = 12               # K most cosine-similar patches as positives (paper Fig. 9b)
  c.temperature = 0.1                # InfoNCE temperature [ours]
  c.loss_blocks = ()                 # blocks feeding L_C / L_PSE; () = all (L_C averaged, L_PSE summed)
  # Output loss L_O
  c.output_loss = 'mae'              # mae: Σ_c |softmax - onehot| (paper: "MAE") | ce
  c.output_weight = 1.0              # λ in L = L_C + λ·L_O
  # PSAQ-ViT patch-similarity entropy (ablation, Table 6); same patch features as L_C
  c.pse_weight = 0.0                 # 0 disables L_PSE
  c.pse_bandwidth = 0.01             # Gaussian KDE bandwidth (PSAQ-ViT)
  c.pse_grid_points = 10             # KDE evaluation points (PSAQ-ViT)
  # Pixel optimisation [ours: PSAQ-ViT-style Adam]
  c.init_std = 1.0                   # initial N(0, init_std) noise in the normalised space
  c.lr = 0.2
  c.b1 = 0.5
  c.b2 = 0.9
  c.schedule = 'cosine'              # cosine (with warmup) | constant
  c.warmup_fraction = 0.1            # linear warmup over this fraction of the iterations
  c.jitter = 0                       # random roll by up to ±jitter pixels per step (0 = off)
  c.flip = False                     # random horizontal flip per step
  c.clip_pixels = True               # keep pixels inside the valid [0, 1] image box after each step
  # De-normalisation for the PNG grid and the pixel box (must match the model's input normalisation)
  c.mean = (0.485, 0.456, 0.406)     # ImageNet
  c.std = (0.229, 0.224, 0.225)
  c.grid_columns = 16
  # Bookkeeping
  c.log_every = 50                   # progress line (absl) every this many steps
  c.checkpoint_every = 100           # Orbax checkpoint of the group in progress (0 = only finished groups)
  c.keep_checkpoints = 2
  c.quality_check = True             # FP top-1 agreement with the targets, synthetic vs noise
  return c


def eval_config() -> mlc.ConfigDict:
  """Mode `evaluate` (top-1/top-5 on config.data's evaluation split, written to eval.json)."""
  c = mlc.ConfigDict()
  c.quantized_checkpoint = ''        # a save_quantized folder (WORKDIR/quantized); '' = the FP model
  c.quantized_mode = ''              # '' = as saved | fake | int (same logits; int runs integer dots)
  c.allow_random_init = False        # model.checkpoint '' evaluates random weights only when True
  return c


def convert_config() -> mlc.ConfigDict:
  """Mode `convert`: a hustvl .pth -> .safetensors, checked strictly against config.model."""
  c = mlc.ConfigDict()
  c.input = ''                       # .pth path; '' = model.checkpoint; 'random' = seeded random init
  c.output = ''                      # .safetensors path; '' = WORKDIR/<input name>.safetensors
  c.dtype = ''                       # '' = the checkpoint's own | float32 | bfloat16
  return c


# hustvl ImageNet models (vim_t/s/b at 224) share everything but the name; where to get the
# official weights is ouromamba_jax.convert.HUSTVL_CHECKPOINTS.
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


def quant_config() -> mlc.ConfigDict:
  """OuroMamba-Quant (mode `quantize`): method, preset, calibration data and settings.

  Every field of `ouromamba_jax.quant.config.default_config()` may be set here; the
  placeholders (None) keep the preset's value. Outputs go to <workdir>/quant/<run name>/.
  """
  c = mlc.ConfigDict()
  c.preset = 'w4a4'                  # w8a8 | w4a8 | w4a4 | w4a4_alog | w4a4_no_outliers | w4a4_ssm8 | w4a4_float_ssm
  c.method = 'ouromamba'             # ouromamba | rtn | ptq4vm
  c.mode = 'fake'                    # fake (float simulation) | int (integer dots); same logits
  # Calibration data
  c.calib_source = 'gen'             # gen: <workdir>/gen/synthetic.npz | noise: N(0, noise_std) | real: training images
  c.calib_images = 128               # paper: 128 (fewer if the source holds fewer: gen)
  c.noise_std = 1.0                  # std of the Gaussian calibration noise (normalised input space)
  c.gen_path = ''                    # '' = <workdir>/gen/synthetic.npz; else an explicit synthetic.npz
  # Block-wise reconstruction (official: 10 epochs, micro-batch 64, AdamW wd 1e-5, clip 2.0)
  c.epochs = 10
  c.micro_batch = 64
  # [ours] AdamW on log(step) with lr 1e-2 (relative updates). The official recipe is
  # scale_space='linear' with lr 5e-4 on the raw steps; on the testbed log space was a little
  # better (RESULTS.md).
  c.scale_space = 'log'              # log | linear
  c.lr_weight = 1e-2                 # official: 5e-4 (linear)
  c.lr_act = 1e-2                    # official: 5e-4 (linear)
  c.lr_smooth = 1e-2                 # PTQ4VM smoothing factors (official lr_s 1e-2)
  c.weight_decay = 1e-5
  c.grad_clip = 2.0
  c.keep_better = True               # a block whose loss got worse keeps its initial scales
  # Quantizer overrides (None = the preset's value)
  c.k = mlc.config_dict.placeholder(float)           # outlier threshold mu + k*sigma (3)
  c.delta_k = mlc.config_dict.placeholder(float)     # the same for Δ (4)
  c.n_refresh = mlc.config_dict.placeholder(int)     # outlier-set reset period (10)
  c.trigger = mlc.config_dict.placeholder(str)       # sample | batch | official
  c.outlier_bits = mlc.config_dict.placeholder(int)  # 8
  c.delta_bits = mlc.config_dict.placeholder(int)    # Δ's inlier bits (the preset's activation bits)
  c.ssm_bits = mlc.config_dict.placeholder(int)      # B, C, A, D inlier bits (likewise)
  c.a_domain = mlc.config_dict.placeholder(str)      # A's grid: linear (official) | log
  c.std_ddof = mlc.config_dict.placeholder(int)      # 1 (unbiased, official)
  # Reports
  c.report_images = 32               # images for the per-layer SQNR/cosine and outlier-rate reports (0 = skip)
  c.run_name = ''                    # '' = <method>_<preset>_<calib_source>
  return c


def pipeline_config() -> mlc.ConfigDict:
  """Mode `pipeline`: generate -> quantize -> evaluate (FP and quantized) -> report."""
  c = mlc.ConfigDict()
  # Quantization runs as 'method:preset:source' (source: gen | noise | real); 'table' = the 21
  # runs of RESULTS.md (W8A8/W4A8/W4A4 x RTN, PTQ4VM+real, OuroMamba+noise/gen/real, plus
  # OuroMamba W4A4_ALOG and W4A4_SSM8 x noise/gen/real). Default: the official W4A4 site set
  # next to W4A4 with A on a log-domain grid (what recovers W4A4 on the testbed).
  c.runs = 'ouromamba:w4a4:gen,ouromamba:w4a4_alog:gen'
  c.eval_images = 500                # test images per evaluation (0 = the whole split)
  c.full = False                     # True: the paper-size settings (see pipeline.FULL)
  return c
