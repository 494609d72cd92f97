"""distill/metrics.py: timing in turns."""
import math
import time

import pytest
import torch

from distill.metrics import time_in_turns


def test_functions_are_timed_in_turns_and_a_slower_one_measures_slower():
    calls = []

    def make(name, pause):
        def fn(x):
            calls.append(name)
            time.sleep(pause)
        return fn
    images = torch.zeros(4, 3, 2, 2)
    timed = time_in_turns({'fast': make('fast', 0.0), 'slow': make('slow', 0.01)}, images, rounds=3, latency=False)
    assert calls == ['fast', 'fast', 'slow', 'slow'] + ['fast', 'slow'] * 3  # two warm-ups each, then turns
    assert timed['slow']['seconds_per_image'] > timed['fast']['seconds_per_image']
    assert timed['slow']['images_per_s'] * timed['slow']['seconds_per_image'] == pytest.approx(1.0)
    assert timed['fast']['batch_size'] == 4 and math.isnan(timed['fast']['latency_ms'])
    with_latency = time_in_turns({'slow': make('slow', 0.01)}, images, rounds=1)
    assert with_latency['slow']['latency_ms'] >= 10

