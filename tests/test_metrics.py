"""distill/metrics.py: timing in turns, accuracy per class, and a lead with its paired standard error."""
import math
import time

import pytest
import torch

from distill.metrics import in_calls, paired_lead, per_class_accuracy, round_ratios, share_per_class, time_in_turns


def test_functions_are_timed_in_turns_and_a_slower_one_measures_slower():
    calls, inference = [], []

    def make(name, pause):
        def fn(x):
            calls.append(name)
            inference.append(torch.is_inference_mode_enabled())  # no autograd graph kept alive by what fn returns
            time.sleep(pause)
        return fn
    images = torch.zeros(4, 3, 2, 2)
    timed = time_in_turns({'fast': make('fast', 0.0), 'slow': make('slow', 0.01)}, images, rounds=3, latency=False)
    assert calls == ['fast', 'fast', 'slow', 'slow'] + ['fast', 'slow'] * 3  # two warm-ups each, then turns
    assert all(inference)
    assert timed['slow']['seconds_per_image'] > timed['fast']['seconds_per_image']
    assert timed['slow']['images_per_s'] * timed['slow']['seconds_per_image'] == pytest.approx(1.0)
    assert timed['fast']['batch_size'] == 4 and math.isnan(timed['fast']['latency_ms'])
    with_latency = time_in_turns({'slow': make('slow', 0.01)}, images, rounds=1)
    assert with_latency['slow']['latency_ms'] >= 10
    slow = timed['slow']['rounds_seconds_per_image']  # every round kept, the best of them reported
    assert len(slow) == 3 and min(slow) == timed['slow']['seconds_per_image']
    assert len(round_ratios(timed['slow'], timed['fast'])) == 3 and min(round_ratios(timed['slow'], timed['fast'])) > 1
    assert round_ratios({'seconds_per_image': 1.0}, timed['fast']) == []  # a timing stored before rounds were kept



def test_in_calls_runs_a_function_on_consecutive_slices():
    sizes = []
    outputs = in_calls(lambda x: sizes.append(len(x)) or x.sum(), 4)(torch.ones(10, 3))
    assert sizes == [4, 4, 2] and [int(o) for o in outputs] == [12, 12, 6]


def test_a_class_absent_from_the_split_has_no_accuracy_not_zero():
    from distill.metrics import per_class_accuracy
    labels, predictions = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 1, 2, 2])
    assert per_class_accuracy(predictions, labels, 3) == [0.5, None, 1.0]


def test_per_class_figures_are_none_for_a_class_with_no_images_not_zero():
    labels, choice = torch.tensor([0, 0, 2, 2, 2]), torch.tensor([0, 1, 1, 1, 0])  # no image of class 1
    assert per_class_accuracy(torch.tensor([0, 1, 2, 2, 0]), labels, 3) == [0.5, None, pytest.approx(2 / 3)]
    assert share_per_class(choice, labels, 2, 3) == [[0.5, None, pytest.approx(1 / 3)],
                                                     [0.5, None, pytest.approx(2 / 3)]]


def test_the_lead_over_the_reference_is_paired_image_by_image():
    right = torch.tensor([1.0, 1, 1, 0, 1, 1, 0, 0])
    reference = torch.tensor([1.0, 0, 1, 0, 1, 1, 1, 0])  # one image won, one lost, six alike
    lead, error = paired_lead(right, reference)
    assert lead == 0 and error == pytest.approx(math.sqrt(2 / 7 / 8))  # the differences' sample variance is 2/7
    assert paired_lead(right, right) == (0.0, 0.0)  # the same answers: no noise between them
