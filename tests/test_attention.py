"""Attention paths: each equals the dense 'xla' reference (outputs, gradients), the grouping is the exact
optimum, 'auto' resolves per device, and the pair counts match a naive count and XLA's cost analysis."""
import functools
import itertools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax import flops
from var_jax import sharding
from var_jax.models import attention as attn
from var_jax.models.var import VAR

DEFAULT_PNS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# An official prefix, non-square steps, and a first scale of several tokens (masked within group 0).
LAYOUTS = [(1, 2, 3, 4, 5, 6, 8), (1, 3, 4, 7), (2, 3, 5, 6)]
CPU_PATHS = ['grouped', 'dot_product', 'splash']
GPU_PATHS = ['cudnn', 'tokamax']  # 16-bit inputs only: tested in bfloat16, against 'xla' on the same values
BF16_TOL = 2e-2


def _skip_unless_runnable(path):
  if path in GPU_PATHS and 'NVIDIA' not in jax.devices()[0].device_kind:
    pytest.skip(f"'{path}' needs an NVIDIA GPU (device here: {jax.devices()[0].device_kind})")
  if path == 'tokamax' and attn.tokamax_base is None:
    pytest.skip("'tokamax' needs the tokamax package (jax >= 0.11, Python >= 3.12), not installed")
  if path == 'splash' and attn.splash_lib is None:
    pytest.skip("'splash' needs jax's Pallas splash attention, missing from this jax")


def _qkv(L, B=2, H=2, D=16, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, L, H, D)).astype(np.float32)) for _ in range(3))


def _close(got, want, tol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


# ---- grouping and pair counts -------------------------------------------------------------------


def _brute_force_groups(patch_nums, max_groups):
  """Fewest computed pairs over every split of the scales into <= max_groups consecutive groups."""
  K, sizes = len(patch_nums), [p * p for p in patch_nums]
  best = None
  for n in range(min(max_groups, K)):
    for cuts in itertools.combinations(range(1, K), n):
      bounds = (0, *cuts, K)
      pairs = sum(sum(sizes[a:b]) * sum(sizes[:b]) for a, b in zip(bounds, bounds[1:]))
      best = pairs if best is None else min(best, pairs)
  return best


@pytest.mark.parametrize('patch_nums', [DEFAULT_PNS, *LAYOUTS, (3,), (1, 1, 1, 2)])
@pytest.mark.parametrize('max_groups', [1, 2, 3, 4, 10])
def test_grouping_is_the_exact_optimum(patch_nums, max_groups):
  groups = attn.scale_groups(patch_nums, max_groups)
  assert groups[0][0] == 0 and groups[-1][1] == len(patch_nums)
  assert all(a[1] == b[0] for a, b in zip(groups, groups[1:])) and len(groups) <= max_groups
  tokens = attn.token_groups(patch_nums, max_groups)
  assert sum((e - b) * e for b, e, _ in tokens) == _brute_force_groups(patch_nums, max_groups)
  assert [masked for *_, masked in tokens] == [b - a > 1 for a, b in groups]


def test_default_schedule_fractions_of_the_dense_square():
  # The figures: the mask keeps 62% of L²; 3 groups compute 67%, 4 groups 64%.
  dense = 680 ** 2
  mask = attn.block_causal_mask(DEFAULT_PNS)
  assert round(mask.sum() / dense, 2) == 0.62
  pairs = lambda g: sum((e - b) * e for b, e, _ in attn.token_groups(DEFAULT_PNS, g))
  assert (round(pairs(3) / dense, 2), round(pairs(4) / dense, 2)) == (0.67, 0.64)
  assert pairs(len(DEFAULT_PNS)) == mask.sum()  # one group per scale: exactly the kept pairs
  assert flops.attention_pairs(DEFAULT_PNS, 'grouped') == pairs(attn.MAX_GROUPS)


@pytest.mark.parametrize('patch_nums,block_q,block_kv', [(DEFAULT_PNS, 128, 128), (DEFAULT_PNS, 128, 64),
                                                         (LAYOUTS[1], 16, 8), ((2, 3, 5, 6), 32, 32)])
def test_tile_pairs_match_a_naive_tile_scan(patch_nums, block_q, block_kv):
  L = sum(p * p for p in patch_nums)
  rows, cols = -(-L // block_q) * block_q, -(-L // block_kv) * block_kv
  keep = np.zeros((rows, cols), bool)
  keep[:L, :L] = attn.block_causal_mask(patch_nums)
  keep[L:, :] = True  # padding queries attend to everything
  tiles = sum(keep[i:i + block_q, j:j + block_kv].any()
              for i in range(0, rows, block_q) for j in range(0, cols, block_kv))
  assert attn.tile_pairs(patch_nums, block_q, block_kv) == tiles * block_q * block_kv


@pytest.mark.parametrize('path', ['xla', 'grouped'])
def test_computed_pairs_match_xla_cost_analysis(path):
  """XLA's FLOP count of the path alone, forward and forward+backward, at two head sizes: the
  difference is the QK^T and AV matmuls alone (2 x 2·D per pair forward, 3x that with the backward),
  plus, in the grouped backward, the sums of the groups' key and value gradients (0.2%)."""
  pn, B, H = DEFAULT_PNS, 1, 2
  L = sum(p * p for p in pn)

  def cost(D, grad):
    fn = lambda q, k, v: attn.PATHS[path](q, k, v, 0.1, pn)
    if grad:  # output and input gradients for a cotangent input (which XLA cannot fold away)
      def fn(q, k, v, cot, fn=fn):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot)
    s = jax.ShapeDtypeStruct((B, L, H, D), jnp.float32)
    c = jax.jit(fn).lower(*[s] * (4 if grad else 3)).compile().cost_analysis()
    return (c[0] if isinstance(c, (list, tuple)) else c)['flops']

  for grad, passes in ((False, 1), (True, 3)):
    per_pair = (cost(32, grad) - cost(16, grad)) / (passes * 2 * 2 * 16 * B * H)
    assert per_pair == pytest.approx(attn.computed_pairs(path, pn), rel=3e-3)


# ---- numerics: every path equals the dense reference -----------------------------------------


def test_xla_path_matches_a_float64_loop():
  pn = LAYOUTS[2]
  q, k, v = _qkv(sum(p * p for p in pn), B=1, H=1)
  q64, k64, v64 = (np.asarray(x[0, :, 0], np.float64) for x in (q, k, v))
  lvl = np.concatenate([np.full(p * p, i) for i, p in enumerate(pn)])
  want = np.zeros_like(q64)
  for i in range(len(lvl)):
    seen = lvl <= lvl[i]
    s = 0.3 * k64[seen] @ q64[i]
    w = np.exp(s - s.max())
    want[i] = w @ v64[seen] / w.sum()
  _close(attn.PATHS['xla'](q, k, v, 0.3, pn)[0, :, 0], want)


@pytest.mark.parametrize('patch_nums', LAYOUTS)
@pytest.mark.parametrize('path', CPU_PATHS + GPU_PATHS)
def test_path_matches_xla_outputs_and_gradients(path, patch_nums):
  _skip_unless_runnable(path)
  q, k, v = _qkv(sum(p * p for p in patch_nums))
  cot = _qkv(q.shape[1], seed=1)[0]
  dtype, tol = (jnp.bfloat16, BF16_TOL) if path in GPU_PATHS else (jnp.float32, 1e-5)
  q, k, v, cot = (x.astype(dtype) for x in (q, k, v, cot))

  @functools.partial(jax.jit, static_argnums=0)
  def run(name, q, k, v, cot):
    out, vjp = jax.vjp(lambda q, k, v: attn.PATHS[name](q, k, v, 0.25, patch_nums), q, k, v)
    return out, vjp(cot)

  f32 = lambda xs: [x.astype(jnp.float32) for x in xs]
  (want, want_grads), (got, got_grads) = run('xla', *f32((q, k, v, cot))), run(path, q, k, v, cot)
  _close(got.astype(jnp.float32), want, tol)
  for g, w in zip(got_grads, want_grads):
    _close(g.astype(jnp.float32), w, tol)


@pytest.mark.parametrize('max_groups', [1, 2, 3])
def test_any_grouping_matches_xla(max_groups):
  pn = DEFAULT_PNS[:7]
  q, k, v = _qkv(sum(p * p for p in pn))
  grouped = attn._grouped(attn._softmax_attention, max_groups=max_groups)  # pylint: disable=protected-access
  _close(grouped(q, k, v, 0.25, pn), attn.PATHS['xla'](q, k, v, 0.25, pn))


@pytest.mark.parametrize('path', CPU_PATHS)
def test_decoding_without_mask_matches_xla(path):
  # One scale's queries against the whole cache prefix (16 queries, 30 keys), no mask.
  q = _qkv(16)[0]
  _, k, v = _qkv(30, seed=2)
  _close(attn.PATHS[path](q, k, v, 0.25, None), attn.PATHS['xla'](q, k, v, 0.25, None))


# Shared AdaLN, no l2-norm (so logits scale 1/sqrt(Dh)/4), non-square steps; and the official variant.
MODELS = {
    'shared_aln_no_l2': dict(patch_nums=(1, 3, 4, 7), shared_aln=True, attn_l2_norm=False),
    'official_first_scale_4': dict(patch_nums=(2, 3, 5, 6)),
}
TINY = dict(vocab_size=32, cvae=8, num_classes=5, depth=2, embed_dim=32, num_heads=2, cond_drop_rate=0.0)


def _model_logits_and_grads(model, params, label, x):
  def loss(p):
    logits = model.apply({'params': p}, label, x)
    return jnp.mean(logits ** 2), logits
  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
  return logits, grads


@pytest.fixture(scope='module', params=['shared_aln_no_l2',
                                        pytest.param('official_first_scale_4', marks=pytest.mark.slow)])
def model_case(request):
  """(kwargs, params, inputs, 'xla' logits and gradients), with unit-scale random weights."""
  kw = dict(TINY, **MODELS[request.param])
  model = VAR(**kw, attention='xla')
  L = model.seq_len - model.first_l
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, L, 8)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32),
                        nn.unbox(shapes['params']))
  label, x = jnp.array([1, 3]), jnp.asarray(rng.normal(size=(2, L, 8)).astype(np.float32))
  return kw, params, (label, x), _model_logits_and_grads(model, params, label, x)


@pytest.mark.parametrize('path', ['grouped', pytest.param('splash', marks=pytest.mark.slow), *GPU_PATHS])
def test_model_logits_and_gradients_match_xla(model_case, path):
  _skip_unless_runnable(path)
  kw, params, (label, x), (want_logits, want_grads) = model_case
  tol = 1e-5
  if path in GPU_PATHS:  # bfloat16 activations on both sides
    kw, tol = dict(kw, dtype='bfloat16'), BF16_TOL
    want_logits, want_grads = _model_logits_and_grads(VAR(**kw, attention='xla'), params, label, x)
  logits, grads = _model_logits_and_grads(VAR(**kw, attention=path), params, label, x)
  _close(logits, want_logits, tol)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    _close(g, w, tol)


def test_splash_under_a_mesh_matches_one_device():
  """The kernel path runs per shard (batch over data, heads over tensor) under the training mesh."""
  _skip_unless_runnable('splash')
  pn = LAYOUTS[1]
  q, k, v = _qkv(sum(p * p for p in pn), B=4, H=2)
  want = attn.PATHS['xla'](q, k, v, 0.25, pn)
  mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=2), jax.devices()[:8])
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    got = jax.jit(lambda q, k, v: attn.PATHS['splash'](q, k, v, 0.25, pn))(q, k, v)
  _close(got, want)


# ---- choosing a path ------------------------------------------------------------------------------


def _device(platform, kind, capability=None):
  return types.SimpleNamespace(platform=platform, device_kind=kind, compute_capability=capability)


def test_auto_resolves_per_device_and_dtype():
  assert attn.resolve('auto') in attn.PATHS  # this machine
  assert attn.resolve('auto', device=_device('cpu', 'cpu')) == attn.AUTO_DEFAULT == 'grouped'
  assert attn.resolve('auto', device=_device('tpu', 'TPU v5 lite')) == 'splash'
  h100 = _device('gpu', 'NVIDIA H100 80GB HBM3', '9.0')
  fused = 'tokamax' if attn.tokamax_base is not None else 'cudnn'
  assert attn.resolve('auto', jnp.bfloat16, h100) == fused
  assert attn.resolve('auto', jnp.bfloat16, _device('gpu', 'NVIDIA A100-SXM4-40GB', '8.0')) == 'cudnn'
  assert attn.resolve('auto', jnp.float32, h100) == 'grouped'  # cuDNN and tokamax take 16-bit inputs
  assert attn.resolve('xla', jnp.bfloat16, h100) == 'xla'


def test_unknown_or_unavailable_path_is_a_clear_error():
  with pytest.raises(ValueError, match=r"model.attention='flash'; expected one of"):
    VAR(**TINY, patch_nums=(1, 2), attention='flash').init(
        jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 4, 8)))
  if attn.tokamax_base is None:
    q, k, v = _qkv(5)
    with pytest.raises(ValueError, match='needs the tokamax package'):
      attn.PATHS['tokamax'](q, k, v, 0.25, (1, 2))
