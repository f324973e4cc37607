"""Input data: TFDS sources stored as ArrayRecord, VAR preprocessing, grain loaders, token datasets."""
from var_jax.data.loader import Loader
from var_jax.data.loader import make_loader
from var_jax.data.sources import default_config


__all__ = ['Loader', 'default_config', 'make_loader']
