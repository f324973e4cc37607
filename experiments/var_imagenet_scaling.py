"""The VAR paper's scaling sweep: ImageNet 256, official tokenizer, depths 6-30 (width 64d, heads d).

  python -m var_jax.sweep --launcher=slurm --sbatch_args="--nodes=4" \
      --config=experiments/var_imagenet_scaling.py:/ckpt/vae_ch160v4096z32.pth --workdir=/ckpt/var_scaling
  # one size only (same recipe): append the depths
  python -m var_jax.sweep --config=experiments/var_imagenet_scaling.py:/ckpt/vae_ch160v4096z32.pth,16 ...

The argument is the official tokenizer (`vae_ch160v4096z32.pth`, or a var_jax tokenizer folder); it is
required, since a randomly initialised tokenizer would make the losses meaningless. ImageNet is read
through TFDS (`imagenet2012`, manual download; see var_jax/data). Data can be pre-tokenized with
var_jax.tokenize and used with --config.base.data.name=tokens --config.base.data.path=DIR.

The paper trains 12 sizes between 18M (depth 6) and 2B (depth 30) parameters; this file sweeps every
even depth from 6 to 30. The training recipe per size follows the official README commands, as rules:
  epochs       200 up to depth 16, 250 up to depth 20, 350 beyond;
  batch size   768, 1024 at depth 30;
  base lr      1e-4 per 256 images up to depth 20, 8e-5 beyond (peak lr = base_lr * batch / 256);
  final lr     0.1 x peak up to depth 20, 0.01 x beyond (official --wpe);
  weight decay 0.05, cosine-ramped to 0.08 at depth 30 (official --twde).
Override any key with --config.base.KEY=VALUE, or edit the rules below for a new study.
"""
import ml_collections

from var_jax.train import config as config_lib

IMAGENET_TRAIN_IMAGES = 1_281_167
DEPTHS = tuple(range(6, 31, 2))


def epochs(cfg):
  d = cfg.model.depth
  return 200 if d <= 16 else 250 if d <= 20 else 350


def batch_size(cfg):
  return 1024 if cfg.model.depth >= 30 else 768


def get_config(arg=None):
  """arg: TOKENIZER[,DEPTH,...]; depths given after the tokenizer train only those sizes."""
  if not arg:
    raise ValueError('experiments/var_imagenet_scaling.py needs the official tokenizer: '
                     '--config=experiments/var_imagenet_scaling.py:PATH/vae_ch160v4096z32.pth[,DEPTH,...]')
  tokenizer_path, *depths = arg.split(',')
  if not all(d.isdigit() for d in depths):
    raise ValueError(f'experiments/var_imagenet_scaling.py: depths {depths} after the tokenizer must be integers')
  base = config_lib.base_config()
  base.tokenizer.path = tokenizer_path
  base.model.dtype = 'bfloat16'
  base.optim.update(dict(b1=0.9, b2=0.95, weight_decay=0.05, schedule='lin0', grad_clip=2.0))
  base.checkpoint.update(dict(every_steps=2000, keep=2))
  base.log.every_steps = 100
  base.eval.update(dict(every_steps=5000, batches=50))  # 50 x 768 = 38400 of the 50000 val images
  base.data.update(dict(name='imagenet2012', image_size=256, hflip=True, train_split='train',
                        eval_split='validation'))

  sweep = ml_collections.ConfigDict()
  sweep.base = base
  sweep.axes = [('model.depth', tuple(int(d) for d in depths) or DEPTHS)]
  sweep.images_per_epoch = IMAGENET_TRAIN_IMAGES
  sweep.derived = [
      ('batch_size', batch_size),
      ('steps', lambda c: round(epochs(c) * IMAGENET_TRAIN_IMAGES / c.batch_size)),
      ('optim.base_lr', lambda c: 1e-4 if c.model.depth <= 20 else 8e-5),
      ('optim.final_lr_frac', lambda c: 0.1 if c.model.depth <= 20 else 0.01),
      ('optim.weight_decay_end', lambda c: 0.08 if c.model.depth >= 30 else None),
  ]
  return sweep
