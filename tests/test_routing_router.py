"""distill/routing/router.py: conditional compute (each expert runs only on its images), streams of batches, routing
timed as infer.py runs it, the Router a selector checkpoint describes, bad input."""
import time

import pytest
import torch

from conftest import needs_cuda
from distill import UserError
from distill.routing.decisions import ANSWERS, extra_costs, selector_choice, selector_scores
from distill.routing.report import routing_summary
from distill.routing.router import Router, measure_routing, router_for


class Counting(torch.nn.Module):
    """An expert that predicts class `c` with a given confidence and records every image it is shown."""

    def __init__(self, c, classes=4, sure=True):
        super().__init__()
        self.c, self.classes, self.sure, self.seen = c, classes, sure, []

    def forward(self, x):
        self.seen.append(x.clone())
        out = torch.zeros(len(x), self.classes, device=x.device)
        out[:, self.c] = torch.where(x.mean((1, 2, 3)) > 0, 10.0, 0.1) if self.sure else 0.1
        return out


def test_a_cascade_runs_a_later_expert_only_on_the_images_passed_on():
    images = torch.randn(10, 3, 4, 4)
    experts = [Counting(0), Counting(1)]
    logits, choice = Router(experts, 'cascade', thresholds=[0.9])(images)
    unsure = images.mean((1, 2, 3)) <= 0  # the first expert's confidence is low on dark images
    assert torch.equal(choice, unsure.long()) and torch.equal(logits.argmax(1), unsure.long())
    assert torch.equal(experts[0].seen[0], images) and torch.equal(experts[1].seen[0], images[unsure])


def test_a_three_stage_cascade_answers_as_its_decision_rule_says():
    images = torch.randn(64, 3, 4, 4)
    experts = [Counting(0, sure=True), Counting(1, sure=True), Counting(2, sure=False)]
    logits, choice = Router(experts, 'cascade', thresholds=[0.9, 0.5])(images)
    brightness = images.mean((1, 2, 3))
    # Dark images are unsure at both sure experts, so they reach the last one; the rest stop at the first.
    assert torch.equal(choice, torch.where(brightness > 0, 0, 2))
    assert torch.equal(logits.argmax(1), choice)
    assert torch.equal(experts[1].seen[0], images[brightness <= 0])  # in input order
    assert torch.equal(experts[2].seen[0], images[brightness <= 0])


class Sureness(torch.nn.Module):
    """A selector that reads the first expert's top probability: sure -> expert 0, unsure -> expert 1."""

    def forward(self, inputs):
        sure = inputs[:, 0] - 0.5
        return torch.stack([10 * sure, -10 * sure, -10 * sure.abs()], 1)


def test_the_selector_runs_every_other_expert_only_on_its_own_images():
    images = torch.randn(10, 3, 4, 4)
    experts = [Counting(0), Counting(1), Counting(2)]
    logits, choice = Router(experts, 'selector', selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))(
        images)
    dark = images.mean((1, 2, 3)) < 0
    assert torch.equal(choice, dark.long()) and torch.equal(logits.argmax(1), dark.long())  # in input order
    assert torch.equal(experts[1].seen[0], images[dark]) and experts[2].seen == []  # nobody went to expert 2


class Close(torch.nn.Linear):
    """A selector whose scores for two experts differ by less than bfloat16 resolves: expert 1 is the better."""

    def __init__(self, features=4):
        super().__init__(features, 2)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.copy_(torch.tensor([4.0, 4.01]))


def test_the_selector_chooses_as_in_float32_under_a_bfloat16_autocast():
    # In bfloat16 both scores round to 4.0 and argmax picks expert 0: evaluate.py scored the selector in float32
    # while infer.py and the timed runs routed under autocast, so the report and the routing disagreed.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, choice = Router([Counting(0), Counting(1)], 'selector', selector=Close(), extra=torch.zeros(2))(
            torch.randn(6, 3, 4, 4))
        scores = selector_scores(Close(), torch.rand(6, 4))  # as selectorTrain.py and evaluate.py score it
    assert choice.tolist() == [1] * 6 and selector_choice(scores, torch.zeros(2), 0.0).tolist() == [1] * 6


def test_an_image_sent_on_is_answered_by_the_committee_of_its_expert_and_the_cheapest():
    images = torch.randn(10, 3, 4, 4)
    experts = [Counting(0), Counting(1), Counting(2, sure=False)]
    logits, choice = Router(experts, 'cascade', thresholds=[0.9, 0.5], answer='committee')(images)
    alone, same_choice = Router(experts, 'cascade', thresholds=[0.9, 0.5], answer='expert')(images)
    assert torch.equal(choice, same_choice) and set(choice.tolist()) == {0, 2}  # what 0 passes on, 1 is not sure of
    cheap = torch.softmax(experts[0](images), 1)
    for k in (0, 2):
        mine = choice == k
        expected = alone[mine] if k == 0 else torch.log((cheap[mine] + torch.softmax(alone[mine], 1)) / 2)
        assert torch.allclose(logits[mine], expected, atol=1e-6)
    assert torch.allclose(torch.softmax(logits, 1).sum(1), torch.ones(10))  # a log-probability is a valid logit


@pytest.mark.parametrize('answer', ANSWERS)
@pytest.mark.parametrize('mode, experts, thresholds', [
    ('cascade', lambda: [Counting(0), Counting(1)], [0.9]),
    ('cascade', lambda: [Counting(0), Counting(1), Counting(2, sure=False)], [0.9, 0.5]),
    ('cascade', lambda: [Counting(0), Counting(1)], [1.0]),  # every image goes on
    ('selector', lambda: [Counting(0), Counting(1), Counting(2)], None)])
def test_a_stream_answers_as_batch_by_batch_routing_with_later_experts_on_gathered_batches(
        mode, experts, thresholds, answer):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, 4, 4, generator=gen) for n in (5, 0, 7, 3, 9, 1)]
    kwargs = dict(thresholds=thresholds) if mode == 'cascade' else dict(
        selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))
    kwargs['answer'] = answer
    one_by_one, streamed = Router(experts(), mode, **kwargs), Router(experts(), mode, **kwargs)
    answers = list(streamed.stream(((x, i) for i, x in enumerate(batches)), batch_size=4))
    assert [tag for tag, _, _ in answers] == list(range(len(batches)))  # every batch, in input order
    for (_, logits, choice), images in zip(answers, batches):
        if len(images):
            expected_logits, expected_choice = one_by_one(images)
            assert torch.equal(choice, expected_choice) and torch.equal(logits, expected_logits)
    for mine, theirs in zip(streamed.experts[1:], one_by_one.experts[1:]):  # the same images, gathered
        assert sum(map(len, mine.seen)) == sum(map(len, theirs.seen))
        assert all(len(x) >= 4 for x in mine.seen[:-1]) and len(mine.seen) <= len(theirs.seen)
    assert len(streamed.experts[1].seen) < len(one_by_one.experts[1].seen)
    everything = torch.cat(batches)  # a folder in calls of 4: the answers of routing it all at once
    assert torch.equal(torch.cat(Router(experts(), mode, **kwargs).folder(everything, 4)), one_by_one(everything)[0])


def test_a_stream_runs_the_first_expert_on_the_next_batch_before_answering_this_one():
    batches = [torch.rand(8, 3, 4, 4) + 0.1 for _ in range(3)]  # bright: the first expert is sure of all of them
    router = Router([Counting(0), Counting(1)], 'cascade', thresholds=[0.9])
    answers = router.stream(((x, i) for i, x in enumerate(batches)), batch_size=4)
    assert next(answers)[0] == 0 and len(router.experts[0].seen) == 2  # the GPU is busy while the host routes
    assert [tag for tag, _, _ in answers] == [1, 2]


@needs_cuda
@pytest.mark.parametrize('answer', ANSWERS)
@pytest.mark.parametrize('mode, experts, thresholds', [
    ('cascade', lambda: [Counting(0), Counting(1)], [0.9]),
    ('cascade', lambda: [Counting(0), Counting(1), Counting(2, sure=False)], [0.9, 0.5]),
    ('selector', lambda: [Counting(0), Counting(1), Counting(2)], None)])
def test_a_stream_on_a_gpu_waits_for_it_only_to_read_counts_and_answers_as_on_the_cpu(
        mode, experts, thresholds, answer, monkeypatch):
    import distill.routing.router as router_module
    from distill.runtime import read_later
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, 4, 4, generator=gen) for n in (64, 7, 64, 0, 64, 33)]
    kwargs = dict(thresholds=thresholds) if mode == 'cascade' else dict(
        selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))
    kwargs['answer'] = answer
    on_cpu = list(Router(experts(), mode, **kwargs).stream(((x, i) for i, x in enumerate(batches)), 32))
    if mode == 'selector':  # as router_for places them
        kwargs = dict(selector=Sureness().cuda(), extra=kwargs['extra'].cuda(), answer=answer)
    router, on_gpu_batches, reads = Router(experts(), mode, **kwargs), [x.cuda() for x in batches], []

    def read_later_allowed(tensor):  # the one wait the stream may make; any other sync raises
        read = read_later(tensor)

        def allowed():
            reads.append(len(tensor))
            torch.cuda.set_sync_debug_mode('default')
            try:
                return read()
            finally:
                torch.cuda.set_sync_debug_mode('error')
        return allowed
    monkeypatch.setattr(router_module, 'read_later', read_later_allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        on_gpu = list(router.stream(((x, i) for i, x in enumerate(on_gpu_batches)), 32))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert len(reads) == len(router.experts[0].seen) + sum(len(e.seen) for e in router.experts[1:-1])
    for (tag, logits, choice), (tag_cpu, logits_cpu, choice_cpu) in zip(on_gpu, on_cpu, strict=True):
        assert tag == tag_cpu and torch.equal(choice.cpu(), choice_cpu)
        assert (logits is None) == (logits_cpu is None)
        if logits is not None:
            torch.testing.assert_close(logits.cpu(), logits_cpu)


class Slow(torch.nn.Module):
    """An expert that answers class c, sure where the image is bright, after sleeping per image."""

    def __init__(self, c, seconds_per_image):
        super().__init__()
        self.c, self.seconds = c, seconds_per_image

    def forward(self, x):
        time.sleep(self.seconds * len(x))
        out = torch.zeros(len(x), 4)
        out[:, self.c] = torch.where(x.mean((1, 2, 3)) > 0, 10.0, 0.1)
        return out


@pytest.mark.parametrize('cheap_seconds, pays', [(0.0002, True), (0.003, False)])
def test_measured_routing_says_whether_it_pays_against_the_reference_alone(cheap_seconds, pays):
    experts = [Slow(0, cheap_seconds), Slow(1, 0.002)]
    routing = {'thresholds': [0.9], 'cost_weight': 0.0, 'reference': 1, 'levels': {'cascade': 1, 'selector': 1},
               'val': {'cascade': (0.9, 2.0), 'selector': (0.9, 3.0)}, 'cascade_tuned_on': ['route', 'val'],
               'target_accuracy': 0.9, 'margin_z': 1.645}
    images = torch.cat([torch.ones(12, 3, 2, 2), -torch.ones(4, 3, 2, 2)])  # a quarter goes on to expert 1
    def two_experts(inputs):
        return Sureness()(inputs)[:, :2]
    measured = measure_routing(routing, experts, two_experts, extra_costs(torch.tensor([1.0, 2.0])), images, 8)
    seconds = measured['measured']['seconds_per_image']
    assert (seconds['cascade'] < seconds['alone']) == pays and measured['measured']['images'] == 16
    assert ('does not pay' in routing_summary(measured, ['cheap', 'costly'])) == (not pays)


@pytest.mark.parametrize('make, message', [
    (lambda: Router([Counting(0), Counting(1)], 'mixture'), "unknown routing mode 'mixture'"),
    (lambda: Router([Counting(0), Counting(1)], 'cascade', thresholds=[1.5]), 'outside [0, 1]'),
    (lambda: Router([Counting(0), Counting(1)], 'cascade', thresholds=[0.5, 0.5]), 'takes 1 threshold'),
])
def test_bad_routing_input_is_one_clear_error(make, message):
    with pytest.raises(UserError, match=message.replace('[', r'\[').replace(']', r'\]')):
        make()


@pytest.mark.parametrize('stored_mode', ['cascade', 'selector'])
def test_a_setting_of_one_mode_picks_that_mode_unless_the_mode_is_given(stored_mode):
    state = {'routing': {'mode': stored_mode, 'thresholds': [0.5], 'cost_weight': 0.0, 'cost': 'macs'},
             'experts': [{'macs': 1.0}, {'macs': 2.0}], 'image_size': 4}
    selector = torch.nn.Linear(10, 2)
    router = router_for(state, [Counting(0), Counting(1)], selector, thresholds=[0.7])
    assert router.mode == 'cascade' and router.thresholds == [0.7]
    router = router_for(state, [Counting(0), Counting(1)], selector, cost_weight=0.2)
    assert router.mode == 'selector' and router.cost_weight == 0.2
    assert router_for(state, [Counting(0), Counting(1)], selector).mode == stored_mode
    with pytest.raises(UserError, match='pass --route to say which mode'):
        router_for(state, [Counting(0), Counting(1)], selector, thresholds=[0.7], cost_weight=0.2)
    with pytest.raises(UserError, match='the selector mode uses --cost-weight'):
        router_for(state, [Counting(0), Counting(1)], selector, mode='selector', thresholds=[0.7])


@pytest.mark.parametrize('batch_size', [1, 5])
def test_costs_measured_again_are_timed_at_the_batch_the_routing_runs_at(batch_size):
    class Costed(Counting):
        macs = 1.0
    state = {'routing': {'mode': 'selector', 'thresholds': [0.5], 'cost_weight': 0.0, 'cost': 'time'},
             'experts': [{'macs': 1.0, 'seconds_per_image': 1.0, 'device': 'elsewhere'}] * 2, 'image_size': 4}
    experts = [Costed(0), Costed(1)]
    router_for(state, experts, torch.nn.Linear(10, 2), cost='measure', batch_size=batch_size)
    assert all(e.cost['batch_size'] == batch_size and len(e.seen[0]) == batch_size for e in experts)
