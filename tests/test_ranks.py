"""average_ranks (ball usage) against scipy.stats.rankdata, ties included."""

import numpy as np
import pytest
from scipy.stats import rankdata

from hyperbolic.evaluation.ball_usage import average_ranks


@pytest.mark.parametrize("levels", [1, 2, 4, None])
def test_average_ranks_are_rankdata(levels):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 13)) if levels is None else rng.integers(0, levels, (50, 13)).astype(float)
    x[0] = np.arange(13)[::-1]     # no ties, descending
    x[1, :4] = x[1, 5]             # a tie inside an otherwise free row
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=1))
