"""The orderings table (`var_jax.scaling.orderings`): inputs checked before any work."""
import pytest

from var_jax import errors
from var_jax.scaling import orderings


def test_a_missing_sweep_table_is_named_before_any_run_is_timed(tmp_path):
  (tmp_path / 'next_scale').mkdir()
  (tmp_path / 'next_scale' / 'results.csv').write_text(
      'run_id,depth,params,flops,loss,acc,status\nd1-absent,1,1000,1e9,3.0,0.1,done\n')
  with pytest.raises(errors.DataError, match=r'raster/results.csv: missing'):
    orderings.rows(str(tmp_path))
