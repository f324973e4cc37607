"""The persistent XLA compilation cache that a sweep's runs, the demo's stages and the test suite share.

JAX reads these variables when it is imported, so a parent process hands them to the processes it starts, and
a value the user set wins (`JAX_ENABLE_COMPILATION_CACHE=false` turns the cache off). Every program is cached,
however small or quick to compile: on a CPU those are what a sweep compiles again in every run (init, train
and eval steps). The cache is bounded (least recently used entries go first, under a file lock).
"""
from __future__ import annotations

import os

DIR = 'JAX_COMPILATION_CACHE_DIR'
SETTINGS = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
            'JAX_COMPILATION_CACHE_MAX_SIZE': str(2 << 30)}


def env(cache_dir: str) -> dict[str, str]:
  """The variables that put the cache at `cache_dir`, less those already in the environment."""
  return {k: v for k, v in {DIR: str(cache_dir), **SETTINGS}.items() if k not in os.environ}
