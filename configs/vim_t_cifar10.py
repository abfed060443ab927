"""The bundled testbed: Vim-T width/depth on CIFAR-10 (32x32, patch 4 -> 65 tokens).

  python main.py --config=configs/vim_t_cifar10.py                       # demo pipeline
  python main.py --config=configs/vim_t_cifar10.py --config.mode=train   # retrain the testbed

Gen (`--config.mode=generate`) defaults to a CPU demo size (8 images x 16 iterations, ~2-3 min
on 2 CPU cores, most of it compilation); the paper-size run is
  --config.mode=generate --config.gen.num_images=128 --config.gen.iterations=1000
(add --config.gen.log_every=50 --config.gen.checkpoint_every=100 for quieter logs).
"""
from configs import common


def get_config():
  c = common.base_config()
  c.workdir = 'workdir/vim_t_cifar10'
  c.model = common.model_config('vim_t_cifar10')
  c.model.checkpoint = 'bundled'
  c.data = common.data_config('cifar10')
  c.data.data_dir = '../shared/data/cifar10'
  c.train = common.train_config()
  c.eval = common.eval_config()
  c.convert = common.convert_config()
  c.gen = common.gen_config()
  c.gen.num_images = 8               # demo size (see the docstring for the paper size)
  c.gen.iterations = 16
  c.gen.log_every = 4
  c.gen.checkpoint_every = 8
  c.gen.remat = False                # 32x32 states are small; no recompute is faster
  # Quantization (mode `quantize`) and the pipeline: demo size (about 10 minutes on a 2-core
  # CPU in all). --config.pipeline.full=True switches to the paper size (see stages.pipeline.FULL).
  c.quant = common.quant_config()
  c.quant.calib_images = 8           # demo: the 8 Gen images (paper: 128)
  c.quant.epochs = 2                 # demo (paper: 10)
  c.pipeline = common.pipeline_config()
  c.pipeline.eval_images = 500       # demo slice of the 5000 test images (full: 0 = all)
  return c
