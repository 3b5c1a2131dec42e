"""The loop reads its non-finite counters only at check points (log / checkpoint / end); a
device-side running max keeps `train.max_nonfinite` exact between them."""

import types

import jax.numpy as jnp
import pytest
from absl import logging

from sora_jax.train import loop


class _Mngr:
    waited = 0

    def wait_until_finished(self):
        self.waited += 1


def _state(streak, total):
    return types.SimpleNamespace(
        nonfinite_streak=jnp.int32(streak), nonfinite_total=jnp.int32(total)
    )


def _run(streaks, checks, limit=3):
    """Feeds per-step streaks (total = number of non-zero streaks so far) to the watch; checks
    after the 1-based steps in `checks`. Returns the warnings logged."""
    warnings = []
    orig = logging.warning
    logging.warning = lambda msg, *a: warnings.append(msg % a)
    try:
        watch = loop._NonfiniteWatch(_state(0, 0), 0, limit, '/wd')
        total = 0
        for done, s in enumerate(streaks, 1):
            total += s > 0
            state = _state(s, total)
            watch.update(state)
            if done in checks:
                watch.check(state, done, _Mngr())
    finally:
        logging.warning = orig
    return warnings


def test_every_step_checks_warn_per_step():
    assert _run([0, 1, 0], checks={1, 2, 3}) == [
        'step 2: non-finite loss or gradient; update skipped (1 in a row, 1 in all).'
    ]


def test_sparse_checks_summarise_and_keep_the_limit_exact():
    # a streak of 3 (steps 3-5) ended by a finite step 6, checked only at step 8
    with pytest.raises(
        FloatingPointError,
        match=r'^3 non-finite steps in a row by step 8 '
        r'\(counters are read every train.log_every',
    ):
        _run([0, 0, 1, 2, 3, 0, 0, 0], checks={4, 8})
    warned = _run([0, 1, 2, 0, 1, 0], checks={4, 6})
    assert warned == [
        'steps 1-4: 2 non-finite losses or gradients; updates skipped (0 in a row '
        'at step 4, at most 2 in a row since step 0, 2 in all).',
        'steps 5-6: 1 non-finite losses or gradients; updates skipped (0 in a row '
        'at step 6, at most 1 in a row since step 4, 3 in all).',
    ]


def test_limit_reached_at_the_check_step():
    with pytest.raises(
        FloatingPointError,
        match=r'^2 non-finite steps in a row at step 4 '
        r'\(train.max_nonfinite=2\)',
    ):
        _run([0, 0, 1, 2], checks={1, 2, 3, 4}, limit=2)
