"""Shared test set-up: 8 fake CPU devices for sharding tests, one compilation cache for the suite and the
processes it starts (REPO/.jax_cache, kept between sessions), and the parity fixtures when present."""
import os
import pathlib

from var_jax import compilation_cache  # imports no jax

REPO = pathlib.Path(__file__).resolve().parents[1]
# Must happen before jax is first imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.update(compilation_cache.env(REPO / ".jax_cache"))

import pytest  # noqa: E402
SHARED = pathlib.Path(os.environ.get("VAR_JAX_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"


@pytest.fixture(scope="session")
def parity_root() -> pathlib.Path:
  """Folder of official-code fixtures; tests that need it skip, visibly, in a user's clone."""
  if not (PARITY / "A" / "expected.npz").exists():
    pytest.skip(f"parity fixtures not found at {PARITY} (set VAR_JAX_SHARED to the folder holding parity/)")
  return PARITY


@pytest.fixture(scope="session")
def fixture_a(parity_root) -> pathlib.Path:
  return parity_root / "A"


@pytest.fixture(scope="session")
def fixture_a_data(fixture_a):
  """Fixture A read through the one fixture reader (`var_jax.weights.fixture`): config, models, weights."""
  from var_jax.weights import fixture  # pylint: disable=g-import-not-at-top
  return fixture.Fixture.load(str(fixture_a))


def load_experiment(name: str, arg=None):
  """`experiments/NAME.py`'s get_config(arg), loaded as the trainer loads a config file."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
