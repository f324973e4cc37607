"""The demo's CPU scaling sweep on the plain 16px shapes: six VAR sizes from 33K to 2M parameters.

  python -m var_jax.sweep --config=experiments/shapes_scaling.py --workdir=ROOT \
      --config.base.tokenizer.path=TOK --config.base.data.name=tokens --config.base.data.path=TOKENS
  python -m var_jax.sweep --config=experiments/shapes_scaling.py:tiny --workdir=ROOT   # for tests

The tokens are those of experiments/tokenizer_shapes.py:demo (256 codes of 16 channels, scales 1, 2, 4, 8:
85 tokens an image), made by `var_jax.tokenize`; `make demo` passes the tokenizer's vocabulary, channels and
scales here. Sizes grow in depth and width together (heads of 32 channels); every size trains for the same
number of steps, with the learning-rate rule in `derived`.
"""
import ml_collections

from var_jax.train import config as config_lib

PATCH_NUMS = (1, 2, 4, 8)
# (depth, width): 33K, 107K, 182K, 389K, 971K and 1.96M parameters with vocab 256.
SIZES = ((1, 32), (1, 64), (2, 64), (2, 96), (3, 128), (4, 160))
SETTINGS = {'full': dict(sizes=SIZES, steps=300, batch_size=16, warmup=20, eval_every=300, eval_batches=8,
                         eval_batch=128, steps_per_call=25),
            'tiny': dict(sizes=SIZES[:2], steps=4, batch_size=8, warmup=1, eval_every=2, eval_batches=2,
                         eval_batch=8, steps_per_call=2)}


def peak_lr(cfg):
  """6e-3 at width 32, falling as 1/sqrt(width): 300 steps leave every size far from converged, so high."""
  return 6e-3 * (32 / cfg.model.embed_dim) ** 0.5


def get_config(arg=None):
  size = arg or 'full'
  if size not in SETTINGS:
    raise ValueError(f'experiments/shapes_scaling.py: unknown argument {arg!r}; expected one of {sorted(SETTINGS)}')
  s = SETTINGS[size]
  base = config_lib.base_config()
  base.seed = 0
  base.batch_size = s['batch_size']
  base.model.update(dict(vocab_size=256, cvae=16, patch_nums=PATCH_NUMS, num_classes=8, drop_path_rate=0.0))
  base.tokenizer.update(dict(vocab_size=256, z_channels=16, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                             norm_groups=8, using_znorm=True, share_quant_resi=4, patch_nums=PATCH_NUMS, seed=1))
  base.optim.update(dict(warmup_steps=s['warmup'], schedule='cos', final_lr_frac=0.05))
  base.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  base.checkpoint.update(dict(every_steps=s['steps'], keep=1))
  base.log.every_steps = 25
  base.train.steps_per_call = s['steps_per_call']  # small models: one dispatch per 25 steps
  base.eval.update(dict(every_steps=s['eval_every'], batches=s['eval_batches'], batch_size=s['eval_batch']))
  base.data.update(dict(name='synthetic_shapes', image_size=16, num_train=2048, num_eval=256, num_threads=1,
                        prefetch=1, worker_count=0, synthetic_style='plain', max_shapes=1))

  sweep = ml_collections.ConfigDict()
  sweep.base = base
  sweep.axes = [('steps', (s['steps'],))]
  sweep.runs = [{'model.depth': d, 'model.embed_dim': w, 'model.num_heads': max(1, w // 32)} for d, w in s['sizes']]
  sweep.derived = [('optim.lr', peak_lr)]
  return sweep
