"""Reproduce an official-code parity fixture and report the largest error per key.

Usage:
  python -m var_jax.parity --fixture ../shared/parity/A --out result.npz

A fixture folder holds `config.json`, the official state dicts (`vae.pth` or
`vae_state.npz`, `var.pth` or `var_state.npz`) and `expected.npz` (inputs `input_img`,
`labels` and the official outputs, PyTorch layouts). Every output key is produced by
one registered group (`register`); each group returns its keys in the same names,
shapes and layouts (NCHW images and feature maps). Keys that no group could compute
(e.g. missing weights) are reported as skipped. The `training` group runs the project's own training
engine (`var_jax.train`: optimizer, schedules, train step) from the fixture's weights, through the
config keys a real run would set. Floats must be within 1e-4 absolute
after scaling by max(1, |expected|max); integer keys (token indices) must be equal.
"""
import dataclasses
import tempfile
from typing import Callable, Dict, List, Sequence, Tuple

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from var_jax import cli
from var_jax import errors
from var_jax.models import editing
from var_jax.models import loss as loss_lib
from var_jax.models import sampling
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train.tasks import var as var_task
from var_jax.weights import fixture as fixture_lib
from var_jax.weights import vqvae

PROG = 'var-parity'
INPUT_KEYS = ('input_img', 'labels', 'edit_keep_mask', 'train_img', 'train_labels')
TOLERANCE = 1e-4
Fixture = fixture_lib.Fixture


def input_img_BHWC(fx: Fixture) -> jax.Array:
  return jnp.asarray(fx.expected['input_img'].transpose(0, 2, 3, 1))


Producer = Callable[[Fixture], Dict[str, np.ndarray]]
PRODUCERS: Dict[str, Producer] = {}


def register(group: str) -> Callable[[Producer], Producer]:
  """Registers a producer of expected keys (run in registration order)."""
  def decorator(fn: Producer) -> Producer:
    PRODUCERS[group] = fn
    return fn
  return decorator


def _nchw(x: jax.Array) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


@register('tokenizer')
def tokenizer_keys(fx: Fixture) -> Dict[str, np.ndarray]:
  """enc_f, idx_k, fhat_k, recon, recon_from_idx, var_input."""
  vae, params = fx.tokenizer()

  @jax.jit
  def run(p, img):
    apply = lambda method, *a: vae.apply({'params': p}, *a, method=method)
    f = apply('encode', img)
    idx, fhats = apply('residual_quantize', f)
    return (f, idx, fhats, apply('fhat_to_img', fhats[-1]),
            apply('fhat_to_img', apply('idx_to_fhat', idx)), apply('idx_to_var_input', idx))

  f, idx, fhats, recon, recon_from_idx, var_input = run(params, input_img_BHWC(fx))
  out = {'enc_f': _nchw(f), 'recon': _nchw(recon), 'recon_from_idx': _nchw(recon_from_idx),
         'var_input': np.asarray(var_input)}
  for k, (idx_Bl, f_hat) in enumerate(zip(idx, fhats)):
    out[f'idx_{k}'] = np.asarray(idx_Bl).astype(np.int64)
    out[f'fhat_{k}'] = _nchw(f_hat)
  return out


@register('var')
def var_keys(fx: Fixture) -> Dict[str, np.ndarray]:
  """logits (teacher forcing on our own tokens of input_img) and ce_loss."""
  vae, vae_params = fx.tokenizer()
  model, params = fx.var()

  @jax.jit
  def run(vp, p, img, label):
    idx = vae.apply({'params': vp}, img, method='img_to_idx')
    x_BLC = vae.apply({'params': vp}, idx, method='idx_to_var_input')
    logits = model.apply({'params': p}, label, x_BLC)
    loss, _ = loss_lib.var_loss(logits, jnp.concatenate(idx, axis=1), model.patch_nums)
    return logits, loss

  logits, loss = run(vae_params, params, input_img_BHWC(fx),
                     jnp.asarray(fx.expected['labels'], jnp.int32))
  return {'logits': np.asarray(logits), 'ce_loss': np.asarray(loss)}


@register('generation')
def generation_keys(fx: Fixture) -> Dict[str, np.ndarray]:
  """gen_idx_k and gen_img: guided generation for `labels` with top-k 1 (deterministic)."""
  vae, vae_params = fx.tokenizer()
  model, params = fx.var()
  sampler = sampling.make_sampler(model, vae)
  idx, img = sampler(params, vae_params, fx.expected['labels'], jax.random.key(0),
                     cfg=fx.config['cfg'], top_k=1)
  out = {f'gen_idx_{k}': np.asarray(idx_Bl).astype(np.int64) for k, idx_Bl in enumerate(idx)}
  out['gen_img'] = _nchw(img)
  return out


@register('editing')
def editing_keys(fx: Fixture) -> Dict[str, np.ndarray]:
  """edit_idx_k and edit_img: zero-shot editing of input_img (tokenized on the fly) with
  edit_keep_mask, for the class(es) and the cfg / top-k of config.json's `edit` block."""
  if 'edit' not in fx.config or 'edit_keep_mask' not in fx.expected:
    raise fixture_lib.MissingPart('no edit block in config.json or no edit_keep_mask in expected.npz')
  e = fx.config['edit']
  vae, vae_params = fx.tokenizer()
  model, params = fx.var()
  labels = fx.expected[e['labels']] if isinstance(e['labels'], str) else e['labels']
  idx, img = editing.edit(sampling.make_sampler(model, vae), params, vae_params, labels,
                          jax.random.key(0), input_img_BHWC(fx), fx.expected['edit_keep_mask'],
                          cfg=e['cfg'], top_k=e['top_k'])
  out = {f'edit_idx_{k}': np.asarray(idx_Bl).astype(np.int64) for k, idx_Bl in enumerate(idx)}
  out['edit_img'] = _nchw(img)
  return out


def train_config(fx: Fixture, tokenizer_dir: str) -> ml_collections.ConfigDict:
  """The training config of config.json's `train` block: the fixture's model fine-tuned from its own
  weights (`init.path`) on the frozen tokenizer saved in `tokenizer_dir`."""
  t = fx.config['train']
  c = config_lib.base_config('var')
  c.steps, c.batch_size = t['steps'], int(fx.expected['train_labels'].shape[1])
  c.model.update(fixture_lib.var_attributes(fx.config))
  c.model.update(cond_drop_rate=t['cond_drop_rate'], drop_path_rate=t['drop_path_rate'])
  c.tokenizer.path = tokenizer_dir
  c.init.path = fx.state_dict_path('var')
  (b1, b2), data_cfg = t['betas'], c.data
  c.optim.update(dict(
      lr=t['peak_lr'], b1=b1, b2=b2, eps=t['eps'], weight_decay=t['weight_decay'],
      weight_decay_end=t['weight_decay_end'], schedule=t['schedule'], total_steps=t['total_steps'],
      warmup_steps=t['warmup_steps'], warmup_start=t['warmup_start'], final_lr_frac=t['final_lr_frac'],
      grad_clip=t['grad_clip'], label_smoothing=t['label_smoothing']))
  data_cfg.image_size = fx.config['image_size']
  return c


@register('training')
def training_keys(fx: Fixture) -> Dict[str, np.ndarray]:
  """train_loss, train_grad_norm, train_lr (per step, before its update) and trained_logits: `train.steps`
  steps of the training engine on train_img / train_labels, from the fixture's weights."""
  if 'train' not in fx.config or 'train_img' not in fx.expected:
    raise fixture_lib.MissingPart('no train block in config.json or no train_img in expected.npz')
  fx.state_dict_path('var')  # MissingPart before any work
  vae, vae_params = fx.tokenizer()
  with tempfile.TemporaryDirectory() as tokenizer_dir:
    vqvae.save(tokenizer_dir, vae, vae_params)
    cfg = config_lib.resolve(train_config(fx, tokenizer_dir), num_devices=1)
    engine = engine_lib.Engine(cfg, jax.devices()[:1])
    state = engine.init_state(engine.task.start_params())
  logged = {'loss': [], 'grad_norm': [], 'lr': []}
  for img, label in zip(fx.expected['train_img'], fx.expected['train_labels']):
    batch = {'image': img.transpose(0, 2, 3, 1), 'label': label.astype(np.int32)}
    state, metrics = engine.train_step(state, engine.global_batch(batch))
    for key, values in logged.items():
      values.append(float(metrics[key]))
  task = engine.task
  _, x_BLC = var_task.teacher_forcing(task.tokenizer, vae_params, {'image': input_img_BHWC(fx)},
                                      task.patch_nums)
  logits = task.model.apply({'params': jax.device_get(state.params)},
                            jnp.asarray(fx.expected['labels'], jnp.int32), x_BLC)
  out = {f'train_{key}': np.asarray(values, np.float32) for key, values in logged.items()}
  out['trained_logits'] = np.asarray(logits)
  return out


@dataclasses.dataclass
class Row:
  key: str
  status: str  # 'ok', 'FAIL' or 'skipped'
  detail: str


def compare(key: str, got: np.ndarray, want: np.ndarray) -> Row:
  """One key's verdict: exact for integers, scaled max error for floats."""
  if got.shape != want.shape:
    return Row(key, 'FAIL', f'shape {got.shape}, expected {want.shape}')
  if np.issubdtype(want.dtype, np.integer):
    wrong = int(np.sum(got != want))
    return Row(key, 'ok' if wrong == 0 else 'FAIL', f'{wrong} of {want.size} differ')
  err = float(np.abs(got.astype(np.float64) - want).max() / max(1.0, np.abs(want).max())) \
      if want.size else 0.0
  return Row(key, 'ok' if err <= TOLERANCE else 'FAIL', f'max scaled error {err:.3g}')


def check_fixture(path: str) -> Tuple[Dict[str, np.ndarray], List[Row]]:
  """Runs every producer on the fixture; returns (computed keys, one row per key)."""
  fx = Fixture.load(path)
  computed, reasons = {}, []
  # Compare float32 math, not the TF32/bfloat16 shortcuts accelerators take by default.
  with jax.default_matmul_precision('highest'):
    for group, producer in PRODUCERS.items():
      try:
        computed.update(producer(fx))
      except fixture_lib.MissingPart as e:
        reasons.append(f'{group}: {e}')
  skipped_why = '; '.join(reasons) or 'no producer for this key'
  rows = []
  for key in sorted(set(fx.expected) - set(INPUT_KEYS)):
    if key in computed:
      rows.append(compare(key, np.asarray(computed[key]), fx.expected[key]))
    else:
      rows.append(Row(key, 'skipped', skipped_why))
  return computed, rows


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f = flags.FLAGS
  if not f.fixture or not f.out:
    raise errors.ConfigError('--fixture and --out are required')
  computed, rows = check_fixture(f.fixture)
  np.savez(f.out, **computed)
  width = max(len(r.key) for r in rows)
  for r in rows:
    print(f'{r.key:<{width}}  {r.status:<7}  {r.detail}')
  counts = {s: sum(r.status == s for r in rows) for s in ('ok', 'skipped', 'FAIL')}
  failed = [r.key for r in rows if r.status == 'FAIL']
  print(f'{counts["ok"]} ok, {counts["skipped"]} skipped, {counts["FAIL"]} failed'
        + (f': {", ".join(failed)}' if failed else ''))
  if failed:
    raise SystemExit(1)


def run() -> None:
  flags.DEFINE_string('fixture', None, 'parity fixture folder.')
  flags.DEFINE_string('out', None, 'where to write the computed keys (.npz).')
  cli.run(main, prog=PROG)

