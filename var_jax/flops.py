"""Analytic parameter and training-FLOP counts for the VAR transformer and the single-map orderings.

`order='raster'` counts the next-token model (var_jax.models.next_token) with the same conventions: one
n x n map of L = n² tokens, a token embedding table (a lookup, no FLOPs) in place of word_embed and
lvl_embed, and the causal mask's L(L + 1)/2 pairs. `order='masked'` counts MaskGIT
(var_jax.models.maskgit): the same map with a [MASK] row in the table, no start token, and no mask (all
L² pairs); training scores the masked positions only but runs the whole map, so its FLOPs are the full
forward's, and sampling is T full passes.

Counts follow the official architecture (FoundationVision/VAR `models/var.py`, `models/basic_var.py`):

  word_embed  Linear(Cvae -> C)                      per token (all but the first scale)
  class_emb   Embedding(num_classes + 1, C)          lookup, no FLOPs
  pos_start   (first_l, C); pos_1LC (L, C); lvl_embed (len(patch_nums), C)   lookups, no FLOPs
  per block   AdaLN Linear(C -> 6C) on the class condition, once per image (shared_aln: one shared
              Linear(C -> 6C) for the whole model and a (6, C) `ada_gss` per block instead);
              qkv Linear(C -> 3C, bias on q and v only); `scale_mul` (num_heads) if attn_l2_norm;
              proj Linear(C -> C); fc1 Linear(C -> H); fc2 Linear(H -> C), H = round(mlp_ratio C)
  head_nm     AdaLN Linear(C -> 2C), once per image
  head        Linear(C -> V)                         per token

FLOP conventions (the usual Kaplan / Chinchilla / MaxText ones):
  * a multiply-accumulate is 2 FLOPs, and only matmuls are counted: biases, norms, softmax, GELU and the
    optimizer update are left out (they are O(params + L·C) and a few percent at most);
  * training = 3 x forward (the backward pass costs twice the forward one);
  * attention costs 2·C FLOPs per (query, key) pair for QK^T and as much again for AV. By default only
    the pairs the block-causal mask keeps are counted (a token of scale k sees every token of scales
    <= k): the model's work, whatever kernel runs it, and what `flops_seen` counts. `attention=PATH`
    counts the pairs that attention path executes instead (`attention.computed_pairs`): 'xla' the
    dense L x L square (1.61x the kept pairs for the default 10-scale schedule), 'grouped' and
    'cudnn' their scale groups (1.03x), 'splash' and 'tokamax' the 128 x 128 tiles they run (1.60x:
    at 680 tokens few tiles are empty); 'auto' the path it resolves to on this machine.

"Embedding" parameters (left out of `nonembed`, as Kaplan et al. leave out token and position
embeddings) are the lookup tables: class_emb, pos_start, pos_1LC and lvl_embed. They cost no FLOPs per
token. word_embed and head are matmuls applied to every token, so they stay in `nonembed`. Note that the
AdaLN weights (a third of each block) act once per image, not per token, so training FLOPs are about
6 · (nonembed - AdaLN) · tokens plus attention, not the language-model 6 · N · D. The VAR paper's model
sizes (18M for depth 6, 310M for depth 16, 2.0B for depth 30) are `total`.
"""
import math
from typing import Any, Mapping, Sequence

import jax
from jax.extend import core as jax_core

from var_jax.models import attention as attention_lib
from var_jax.models import maskgit as maskgit_lib
from var_jax.models import maskgit_sampling
from var_jax.models import next_token as next_token_lib
from var_jax.models import var as var_lib

# VAR (var_jax.models.var), the next-token baseline (models.next_token), MaskGIT (models.maskgit)
ORDERS = ('next_scale', 'raster', 'masked')
_RESOLVE = {'next_scale': var_lib.resolve, 'raster': next_token_lib.resolve, 'masked': maskgit_lib.resolve}


def _resolve(model_kwargs: Mapping[str, Any], order: str = 'next_scale') -> dict:
  """Model attributes with defaults and the depth rule (the order's model `resolve`), refusing a
  non-positive depth."""
  depth = model_kwargs.get('depth')
  if depth is not None and (not isinstance(depth, int) or depth < 1):
    raise ValueError(f'model.depth must be a positive int, got {depth!r}')
  if order not in ORDERS:
    raise ValueError(f'order={order!r}; expected one of {ORDERS}')
  return _RESOLVE[order](model_kwargs)


def _mask_blocks(kw: Mapping[str, Any], order: str) -> tuple[int, ...]:
  """The block sizes of the attention mask: VAR's scales, one token per block (causal), or the one map
  (masked: a single block, no mask)."""
  if order == 'raster':
    return next_token_lib.causal_blocks(tokens_per_image(kw['patch_nums']))
  return kw['patch_nums']


def tokens_per_image(patch_nums: Sequence[int]) -> int:
  """Tokens in one image's token pyramid: sum of pn² over the scales (680 for the default schedule)."""
  return sum(p * p for p in patch_nums)


def attention_pairs(patch_nums: Sequence[int], attention: str | None = None) -> int:
  """(query, key) pairs per head and layer: those the block-causal mask keeps (None), or those the
  attention path `attention` computes (a name of `attention.PATHS`, 'xla' being the dense L²)."""
  if attention is not None:
    return attention_lib.computed_pairs(attention, patch_nums)
  pairs, seen = 0, 0
  for p in patch_nums:
    seen += p * p
    pairs += p * p * seen
  return pairs


def param_breakdown(model_kwargs: Mapping[str, Any], order: str = 'next_scale') -> dict[str, int]:
  """Parameter count per component (see the module docstring for the components).

  order='raster' (the next-token model): a token embedding table `tok_embed` (V, C) replaces
  word_embed, pos_start is (1, C), and there is no lvl_embed. order='masked' (MaskGIT): `tok_embed` is
  (V + 1, C) with the [MASK] row, and there is no pos_start.
  """
  kw = _resolve(model_kwargs, order)
  c, depth, v = kw['embed_dim'], kw['depth'], kw['vocab_size']
  hidden = round(c * kw['mlp_ratio'])
  pns = kw['patch_nums']
  if kw['shared_aln']:
    shared_ada, block_ada = c * 6 * c + 6 * c, 6 * c
  else:
    shared_ada, block_ada = 0, c * 6 * c + 6 * c
  block = (
      block_ada
      + 3 * c * c + 2 * c  # qkv, with q and v biases
      + (kw['num_heads'] if kw['attn_l2_norm'] else 0)
      + c * c + c  # proj
      + c * hidden + hidden  # fc1
      + hidden * c + c  # fc2
  )
  if order == 'raster':
    inputs = dict(tok_embed=v * c, class_emb=(kw['num_classes'] + 1) * c, pos_start=c,
                  pos_1LC=tokens_per_image(pns) * c)
  elif order == 'masked':
    inputs = dict(tok_embed=(v + 1) * c, class_emb=(kw['num_classes'] + 1) * c, pos_1LC=tokens_per_image(pns) * c)
  if order in ('raster', 'masked'):
    return dict(inputs, shared_ada_lin=shared_ada, blocks=depth * block, head_nm=c * 2 * c + 2 * c,
                head=c * v + v)
  return dict(
      word_embed=kw['cvae'] * c + c,
      class_emb=(kw['num_classes'] + 1) * c,
      pos_start=pns[0] ** 2 * c,
      pos_1LC=tokens_per_image(pns) * c,
      lvl_embed=len(pns) * c,
      shared_ada_lin=shared_ada,
      blocks=depth * block,
      head_nm=c * 2 * c + 2 * c,
      head=c * v + v,
  )


EMBEDDING_PARAMS = ('class_emb', 'pos_start', 'pos_1LC', 'lvl_embed', 'tok_embed')


def param_counts(model_kwargs: Mapping[str, Any], order: str = 'next_scale') -> dict[str, int]:
  """{'total', 'nonembed'} parameter counts; nonembed leaves out the lookup tables (EMBEDDING_PARAMS)."""
  parts = param_breakdown(model_kwargs, order)
  total = sum(parts.values())
  return dict(total=total, nonembed=total - sum(parts.get(k, 0) for k in EMBEDDING_PARAMS))


def forward_flops_breakdown(model_kwargs: Mapping[str, Any], attention: str | None = None,
                            order: str = 'next_scale') -> dict[str, float]:
  """Forward-pass matmul FLOPs for one image (teacher forcing over the whole pyramid), per component.

  attention: None counts the pairs the mask keeps; a path name (or 'auto', resolved for this machine
  and the model's dtype) the pairs that path computes. order='raster': the next-token model, whose
  inputs are a lookup (no word_embed matmul) and whose mask is causal over the n² tokens.
  """
  kw = _resolve(model_kwargs, order)
  if attention is not None:
    attention = attention_lib.resolve(attention, var_lib.DTYPES[kw['dtype']])
  c, depth, v = kw['embed_dim'], kw['depth'], kw['vocab_size']
  hidden = round(c * kw['mlp_ratio'])
  pns = kw['patch_nums']
  seq = tokens_per_image(pns)
  ada_layers = 1 if kw['shared_aln'] else depth
  word_embed = 0.0 if order in ('raster', 'masked') else 2.0 * (seq - pns[0] ** 2) * kw['cvae'] * c
  return dict(
      word_embed=word_embed,
      adaln=2.0 * ada_layers * c * 6 * c + 2.0 * c * 2 * c,  # blocks + head_nm, once per image
      qkv_proj=2.0 * depth * seq * 4 * c * c,
      mlp=2.0 * depth * seq * 2 * c * hidden,
      attention=2.0 * depth * 2 * c * attention_pairs(_mask_blocks(kw, order), attention),  # QK^T and AV
      head=2.0 * seq * c * v,
  )


def train_flops_per_image(model_kwargs: Mapping[str, Any], attention: str | None = None,
                          order: str = 'next_scale') -> float:
  """Forward + backward matmul FLOPs for one training image: 3 x the forward count."""
  return 3.0 * sum(forward_flops_breakdown(model_kwargs, attention, order).values())


def sample_flops_per_image(model_kwargs: Mapping[str, Any], order: str = 'next_scale',
                           cfg: bool = True, steps: int = maskgit_sampling.DEFAULT_STEPS) -> float:
  """Transformer matmul FLOPs to generate one image, twice with CFG (the batch holds a conditional and
  an unconditional row). next_scale and raster decode with the KV cache: every token passes the blocks
  once and attends to the pairs the mask keeps, so this is the forward count; their AdaLN linears are
  counted once per image as in training (the samplers recompute them at each step: K times for VAR,
  n² for raster). masked (MaskGIT) runs the whole map `steps` times (T full forward passes, AdaLN
  included). The tokenizer's decoder, the same for every order, is left out."""
  passes = steps if order == 'masked' else 1
  return (2.0 if cfg else 1.0) * passes * sum(forward_flops_breakdown(model_kwargs, None, order).values())


# ---------------------------------------------------------------------------------------------------
# Counting from a function's shapes, for models without a closed form here (the tokenizer's conv nets).
# ---------------------------------------------------------------------------------------------------


def count_params(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
  if name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
  return 0.0


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    subs = []
    for value in eqn.params.values():
      for v in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(v, jax_core.ClosedJaxpr):
          subs.append(v.jaxpr)
        elif isinstance(v, jax_core.Jaxpr):
          subs.append(v)
    counts = [_jaxpr_flops(j) for j in subs]
    if eqn.primitive.name == 'cond':
      total += max(counts, default=0.0)  # one branch runs
    else:
      total += eqn.params.get('length', 1) * sum(counts)  # a scan body runs `length` times
  return total


def matmul_flops(fn, *args) -> float:
  """Matmul and convolution FLOPs (2 per multiply-add) of `fn(*args)`, from its jaxpr.

  `args` may be arrays or ShapeDtypeStructs; nothing is computed. A while loop's body counts once.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
