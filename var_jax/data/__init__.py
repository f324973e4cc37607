"""Input data: TFDS sources stored as ArrayRecord, VAR preprocessing, grain loaders, token datasets.

Importing this package (or `var_jax.data.config`) imports no dataset library: `make_loader` brings in TFDS and
grain only for the sources that need them.
"""
from __future__ import annotations

from var_jax.data import config
from var_jax.data.config import default_config


def make_loader(data_cfg, *, token_spec=None, **kwargs):
  """The per-process batch iterator of `data_cfg`'s source; see `var_jax.data.loader.make_loader`.

  `synthetic_tokens` is served without TFDS or grain, drawn as `token_spec` says
  (`var_jax.data.synthetic_tokens.TokenSpec`); every other source says itself what its records hold.
  """
  if config.option(data_cfg, 'name') == config.SYNTHETIC_TOKENS:
    from var_jax.data import synthetic_tokens  # pylint: disable=g-import-not-at-top
    return synthetic_tokens.make_loader(
        token_spec, **{k: kwargs[k] for k in ('global_batch_size', 'seed', 'train', 'process_index',
                                              'process_count')})
  from var_jax.data import loader  # pylint: disable=g-import-not-at-top
  return loader.make_loader(data_cfg, **kwargs)


__all__ = ['default_config', 'make_loader']
