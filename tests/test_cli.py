"""What every entry point shares (`var_jax.cli`): a console without library chatter."""
import logging
import os

import pytest

from var_jax import cli


def _record(path, level):
  return logging.LogRecord('absl', level, os.path.join(*path.split('/')), 1, 'message', None, None)


@pytest.mark.parametrize('path, level, chatter', [
    ('/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.INFO, True),
    ('/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.WARNING, True),
    ('/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.ERROR, False),
    ('/site-packages/tensorflow_datasets/core/dataset_builder.py', logging.WARNING, True),
    ('/lib/python3.11/asyncio/base_events.py', logging.ERROR, True),
    ('/repo/var_jax/train/loop.py', logging.INFO, False),
])
def test_library_chatter_stays_off_the_console_and_errors_show(path, level, chatter):
  assert cli.library_chatter(_record(path, level)) == chatter
