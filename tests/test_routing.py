"""distill/routing.py: decisions, both routing modes, conditional compute, the choice on val, bad input."""
import time

import pytest
import torch

from conftest import needs_cuda
from distill import UserError
from distill.loaders import TensorLoader
from distill.engine import WarmupCosine, build_optimizer, train_one_epoch
from distill.checkpoint import save_checkpoint
from distill.routing import (SELECTOR_INPUTS, Router, SelectorScore, cascade_choice, cascade_cost, cascade_inputs,
                             check_cost_device, check_routable, choose_point, choose_routing, confidences,
                             cost_vector, expert_correctness, extra_costs, gap_closed_text, load_experts,
                             load_selector, measure_costs, measure_routing, paired_margin, pick_mode, routing_report,
                             routing_summary, router_for, selection_step, selector_choice, selector_cost,
                             selector_inputs, teacher_of)
from distill.runtime import device_name
from models import build_model


def test_targets_say_which_experts_are_right():
    labels = torch.tensor([0, 1, 2])
    a = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]])  # right, wrong, right
    b = torch.tensor([[0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])  # wrong, right, right
    assert expert_correctness([a, b], labels).tolist() == [[1, 0], [0, 1], [1, 1]]


def test_a_cascade_keeps_an_answer_where_its_confidence_reaches_the_threshold():
    conf = torch.tensor([[0.95, 0.5, 1.0], [0.6, 0.9, 1.0], [0.6, 0.7, 1.0]])
    assert cascade_choice(conf, [0.9, 0.8]).tolist() == [0, 1, 2]
    assert cascade_choice(conf, [0.0, 0.8]).tolist() == [0, 0, 0]  # threshold 0: the first expert answers all
    assert cascade_choice(conf, [1.0, 1.0]).tolist() == [2, 2, 2]  # threshold 1: every image goes on
    costs = torch.tensor([1.0, 2.0, 4.0])
    assert cascade_cost(torch.tensor([0, 1, 2]), costs).tolist() == [1.0, 3.0, 7.0]  # all the experts that ran


def test_the_selector_trades_predicted_correctness_against_the_extra_cost():
    scores = torch.tensor([[2.0, 1.0], [-1.0, 0.5], [1.0, 1.2]])  # logits of P(expert right)
    extra = extra_costs(torch.tensor([1.0, 4.0]))
    assert extra.tolist() == [0.0, 1.0]  # the cheapest expert has already run
    assert selector_choice(scores, extra, 0.0).tolist() == [0, 1, 1]
    assert selector_choice(scores, extra, 0.05).tolist() == [0, 1, 0]  # a small gain is not worth the cost
    assert selector_choice(scores, extra, 10.0).tolist() == [0, 0, 0]
    assert selector_cost(torch.tensor([0, 1]), torch.tensor([1.0, 4.0]), 0.5).tolist() == [1.5, 5.5]


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


def test_the_selector_reads_the_cheap_experts_probabilities_largest_first():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    inputs = selector_inputs(logits)
    assert torch.allclose(inputs, torch.softmax(logits, 1).sort(1, descending=True).values)
    assert torch.allclose(inputs.sum(1), torch.ones(2)) and (inputs[:, :-1] >= inputs[:, 1:]).all()


def test_the_selector_runs_every_other_expert_only_on_its_own_images():
    images = torch.randn(10, 3, 4, 4)
    experts = [Counting(0), Counting(1), Counting(2)]
    logits, choice = Router(experts, 'selector', selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))(
        images)
    dark = images.mean((1, 2, 3)) < 0
    assert torch.equal(choice, dark.long()) and torch.equal(logits.argmax(1), dark.long())  # in input order
    assert torch.equal(experts[1].seen[0], images[dark]) and experts[2].seen == []  # nobody went to expert 2


@pytest.mark.parametrize('mode, experts, thresholds', [
    ('cascade', lambda: [Counting(0), Counting(1)], [0.9]),
    ('cascade', lambda: [Counting(0), Counting(1), Counting(2, sure=False)], [0.9, 0.5]),
    ('cascade', lambda: [Counting(0), Counting(1)], [1.0]),  # every image goes on
    ('selector', lambda: [Counting(0), Counting(1), Counting(2)], None)])
def test_a_stream_answers_as_batch_by_batch_routing_with_later_experts_on_gathered_batches(mode, experts, thresholds):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, 4, 4, generator=gen) for n in (5, 0, 7, 3, 9, 1)]
    kwargs = dict(thresholds=thresholds) if mode == 'cascade' else dict(
        selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))
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
@pytest.mark.parametrize('mode, experts, thresholds', [
    ('cascade', lambda: [Counting(0), Counting(1)], [0.9]),
    ('cascade', lambda: [Counting(0), Counting(1), Counting(2, sure=False)], [0.9, 0.5]),
    ('selector', lambda: [Counting(0), Counting(1), Counting(2)], None)])
def test_a_stream_on_a_gpu_waits_for_it_only_to_read_counts_and_answers_as_on_the_cpu(mode, experts, thresholds,
                                                                                       monkeypatch):
    import distill.routing as routing
    from distill.runtime import read_later
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, 4, 4, generator=gen) for n in (64, 7, 64, 0, 64, 33)]
    kwargs = dict(thresholds=thresholds) if mode == 'cascade' else dict(
        selector=Sureness(), extra=extra_costs(torch.tensor([1., 2, 3])))
    on_cpu = list(Router(experts(), mode, **kwargs).stream(((x, i) for i, x in enumerate(batches)), 32))
    if mode == 'selector':  # as router_for places them
        kwargs = dict(selector=Sureness().cuda(), extra=kwargs['extra'].cuda())
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
    monkeypatch.setattr(routing, 'read_later', read_later_allowed)
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


def test_the_cheapest_point_that_reaches_the_target_is_chosen():
    points = [('a', 0.80, 9.0), ('b', 0.81, 8.0), ('c', 0.795, 6.0), ('d', 0.78, 4.0)]
    assert choose_point(points, 0.80) == (points[1], 1)
    assert choose_point(points, 0.79) == (points[2], 1)
    assert choose_point(points, 0.90) == (points[1], 0)  # nothing reaches it: the most accurate


def test_a_margin_refuses_a_point_that_reaches_the_target_only_within_vals_noise():
    # The reference, expert 1, is right on images 0-79; the cheap expert 0 on 0-69 and 80-90: one point
    # more, but they differ on 21 images, well within the noise of 100. Routing 0-79 to expert 1 and the
    # rest to expert 0 is right on 91 and differs on 11: clearly better.
    correct = torch.zeros(100, 2)
    correct[:80, 1] = 1
    correct[:70, 0] = correct[80:91, 0] = 1
    cheap = torch.zeros(100, dtype=torch.long)
    mixed = torch.cat([torch.ones(80, dtype=torch.long), torch.zeros(20, dtype=torch.long)])
    points = [('cheap', 0.81, 1.0), ('mixed', 0.91, 2.0)]
    for z, expected in ((0.0, points[0]), (1.645, points[1])):
        margins = [paired_margin(choice, correct, 1, z) for choice in (cheap, mixed)]
        assert choose_point(points, 0.80, margins) == (expected, 2)
    assert paired_margin(cheap, correct, 1, 1.0) == pytest.approx(22 ** 0.5 / 100)  # one more than seen
    # where no point clears the target by its margin, the cheapest that reaches it, as without one; the
    # reference itself never clears its own accuracy
    reference = ('reference', 0.80, 3.0)
    margins = [paired_margin(c, correct, 1, 1.645) for c in (cheap, torch.ones(100, dtype=torch.long))]
    assert choose_point([points[0], reference], 0.80, margins) == (points[0], 1)


def test_the_default_mode_is_the_one_that_reaches_the_best_single_expert_more_cheaply():
    # Expert 1 (costlier) is right everywhere, expert 0 only where it is confident: the cascade can match
    # expert 1 at the cost of expert 0 plus a quarter of expert 1; the selector here knows nothing.
    correct = torch.tensor([[1., 1]] * 3 + [[0., 1]])
    conf = torch.tensor([[0.99, 0.9]] * 3 + [[0.4, 0.9]])
    routing = choose_routing(conf, torch.zeros(4, 2), correct, torch.tensor([1.0, 4.0]), 0.0, max_drop=0.0)
    assert routing['mode'] == 'cascade' and routing['val']['cascade'] == (1.0, 2.0)
    assert routing['target_accuracy'] == 1.0


def test_measured_time_not_the_modelled_cost_picks_the_default_mode_between_equals():
    routing = {'levels': {'cascade': 1, 'selector': 1}, 'val': {'cascade': (0.9, 2.0), 'selector': (0.9, 3.0)}}
    assert pick_mode(routing)['mode'] == 'cascade'  # modelled: the cascade is cheaper
    assert pick_mode(routing, {'cascade': 0.5, 'selector': 0.4, 'alone': 1.0})['mode'] == 'selector'
    routing['levels']['cascade'] = 2  # cleared by its margin: better met, whatever its time
    assert pick_mode(routing, {'cascade': 0.5, 'selector': 0.4, 'alone': 1.0})['mode'] == 'cascade'


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


def test_the_cascade_may_be_tuned_on_more_held_out_images_and_is_still_compared_on_val():
    # On val alone the cheap expert's answers at 0.6 look safe (right on the one there); on the larger tuning
    # set half of them are wrong, so the cascade passes them on, and its val outcome is what is compared.
    conf = torch.tensor([[0.99, 0.9], [0.6, 0.9], [0.3, 0.9]])
    correct = torch.tensor([[1., 1], [1., 1], [0., 1]])
    tuning = (torch.tensor([[0.99, 0.9]] * 2 + [[0.6, 0.9]] * 4 + [[0.3, 0.9]]),
              torch.tensor([[1., 1]] * 4 + [[0., 1]] * 3))
    costs = torch.tensor([1.0, 4.0])
    alone = choose_routing(conf, torch.zeros(3, 2), correct, costs, 0.0, 0.0)
    assert alone['mode'] == 'cascade' and alone['thresholds'] == [0.5]
    routing = choose_routing(conf, torch.zeros(3, 2), correct, costs, 0.0, 0.0, cascade_tuning=tuning)
    assert routing['thresholds'] == [0.7] and routing['val']['cascade'] == pytest.approx((1.0, 1 + 2 / 3 * 4))


def test_cascade_inputs_are_the_plain_images_of_each_split():
    logits = {'route': torch.randn(12, 3), 'val': torch.randn(4, 3)}  # route: 3 images, then 3 copies of them
    outputs = {part: ([x, 2 * x], None) for part, x in logits.items()}
    correct = {part: torch.rand(len(x), 2) for part, x in logits.items()}
    conf, right = cascade_inputs(outputs, correct, {'route': 3, 'val': 4})
    assert torch.equal(right, torch.cat([correct['route'][:3], correct['val']]))
    plain = torch.cat([logits['route'][:3], logits['val']])
    assert torch.allclose(conf, confidences([plain, 2 * plain]))


def test_the_report_compares_both_modes_with_their_references():
    labels = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([[5.0, 0], [5.0, 0], [0.1, 0], [0.1, 0]])  # right and sure on the first half only
    b = torch.tensor([[0.0, 1], [0.0, 1], [0.0, 1], [0.0, 1]])  # right on the second half
    scores = torch.tensor([[5.0, -5], [5.0, -5], [-5.0, 5], [-5.0, 5]])
    costs = {'time': torch.tensor([1.0, 3.0]), 'macs': torch.tensor([10.0, 30.0])}
    routing = {'mode': 'selector', 'thresholds': [0.9], 'cost_weight': 0.0, 'cost': 'time'}
    report = routing_report([a, b], labels, scores, costs, {'time': 0.5, 'macs': 1.0}, routing)
    rows = report['rows']
    assert rows['selector'] == {'accuracy': 1.0, 'time': 1.5 + 0.5 * 3, 'macs': 11 + 0.5 * 30}
    assert rows['cascade']['accuracy'] == 1.0 and rows['cascade']['time'] == 1 + 0.5 * 3
    assert rows['routed']['mode'] == 'selector' and rows['oracle']['accuracy'] == 1.0
    assert rows['best single']['accuracy'] == 0.5 and rows['max confidence']['time'] == 4.0
    assert report['share'] == {'cascade': [0.5, 0.5], 'selector': [0.5, 0.5]}
    assert report['gap_closed'] == {'cascade': 1.0, 'selector': 1.0}  # best single 50%, oracle and both modes 100%
    assert gap_closed_text(report['gap_closed']) == 'cascade 100%, selector 100%'
    same = routing_report([b, b], labels, scores, costs, {'time': 0.5, 'macs': 1.0}, routing)
    assert gap_closed_text(same['gap_closed']).startswith('no gap')  # not 'nan%'


def test_the_selector_learns_from_its_inputs_and_its_val_score_rises():
    # Expert 1 is right where input 0 is negative, expert 0 where it is positive.
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 8, generator=gen)
    correct = torch.stack([inputs[:, 0] > 0, inputs[:, 0] <= 0], 1).float()
    torch.manual_seed(0)
    selector = build_model('selector', 2, in_features=8)
    train = TensorLoader(inputs[:500], correct[:500], 50, train=True)
    val = TensorLoader(inputs[500:], correct[500:], 50)
    optimizer = build_optimizer(selector, 0.05, 5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(5 * len(train), len(train)))
    score = SelectorScore()
    before = score(selector, val)[1]
    for epoch in range(5):
        train.set_epoch(epoch)
        train_one_epoch(selector, train, optimizer, scheduler, selection_step(selector, 2.0))
    after = score(selector, val)[1]
    assert after > 0.9 and after > before + 0.2, (before, after)


@pytest.mark.parametrize('make, message', [
    (lambda: Router([Counting(0), Counting(1)], 'mixture'), "unknown routing mode 'mixture'"),
    (lambda: Router([Counting(0), Counting(1)], 'cascade', thresholds=[1.5]), 'outside [0, 1]'),
    (lambda: Router([Counting(0), Counting(1)], 'cascade', thresholds=[0.5, 0.5]), 'takes 1 threshold'),
    (lambda: check_cost_device([{'device': 'NVIDIA H100 80GB HBM3'}], 'time', torch.device('cpu'), 'sel.pt'),
     'timed on NVIDIA H100 80GB HBM3, not on this device'),
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


def test_experts_are_timed_on_this_device_and_refuse_a_student_of_other_data(tiny_runs, tmp_path):
    work, _ = tiny_runs
    paths = [str(work / 'checkpoints' / arch / 'best.pt') for arch in ('densenet121', 'googlenet')]
    experts = load_experts(paths, 'cpu')
    assert [e.name for e in experts] == ['densenet121', 'googlenet']
    assert all(e.macs > 0 and e.cost == {'macs': e.macs} for e in experts)  # no time until measured
    size = experts[0].state['image_size']
    measure_costs(experts, torch.zeros(8, 3, size, size).contiguous(memory_format=torch.channels_last))
    assert {e.cost['device'] for e in experts} == {device_name(torch.device('cpu'))}
    assert cost_vector([e.cost for e in experts], 'time').tolist() == [e.cost['seconds_per_image'] for e in experts]
    assert cost_vector([e.cost for e in experts], 'macs').tolist() == [e.macs for e in experts]
    state = torch.load(paths[1], weights_only=True)
    save_checkpoint({**state, 'mean': [0.1, 0.2, 0.3]}, str(tmp_path / 'other.pt'))
    with pytest.raises(UserError, match='normalises images differently'):
        load_experts([paths[0], str(tmp_path / 'other.pt')], 'cpu')
    with pytest.raises(UserError, match="unknown cost 'flops'"):
        cost_vector([e.cost for e in experts], 'flops')


def test_a_cost_timed_here_is_accepted_and_macs_never_need_a_device():
    check_cost_device([{'device': device_name(torch.device('cpu'))}], 'time', torch.device('cpu'), 'sel.pt')
    check_cost_device([{'device': 'another machine'}], 'macs', torch.device('cpu'), 'sel.pt')


def test_a_teacher_fallback_needs_a_teacher_the_experts_name():
    class E:
        def __init__(self, teacher, path):
            self.state, self.path = {'teacher': teacher, 'config': {}}, path
    with pytest.raises(UserError, match='trained without a teacher'):
        teacher_of([E('t/best.pt', 'a/best.pt'), E(None, 'b/best.pt')])
    with pytest.raises(UserError, match='different teachers'):
        teacher_of([E('t/best.pt', 'a/best.pt'), E('u/best.pt', 'b/best.pt')])
    assert teacher_of([E('t/best.pt', 'a/best.pt'), E('t/best.pt', 'b/best.pt')]) == 't/best.pt'


def test_routing_needs_two_different_experts_of_different_names(tmp_path):
    class E:
        def __init__(self, path):
            self.path, self.name = str(path), path.parent.name
    for run in ('gn', 'other/gn'):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / 'best.pt').touch()
    (tmp_path / 'link').symlink_to(tmp_path / 'gn')
    with pytest.raises(UserError, match="routing needs two or more experts, got only '.*gn/best.pt'"):
        check_routable([E(tmp_path / 'gn' / 'best.pt')])
    with pytest.raises(UserError, match=r"'.*link/best.pt' is given twice as an expert \(as '.*gn/best.pt' too\)"):
        check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'link' / 'best.pt')])
    with pytest.raises(UserError, match=r"'.*/gn/best.pt' and '.*other/gn/best.pt' are both named 'gn' .* gn-2"):
        check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'other' / 'gn' / 'best.pt')])
    check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'teacher' / 'best.pt')])


def test_confidences_are_each_experts_top_probability():
    conf = confidences([torch.tensor([[0.0, 0.0]]), torch.tensor([[10.0, 0.0]])])
    assert conf[0, 0] == pytest.approx(0.5) and conf[0, 1] > 0.99


def test_a_selector_trained_on_other_inputs_or_its_last_pt_is_refused_in_one_line(tmp_path):
    old = {'arch': 'selector', 'experts': [], 'routing': {'mode': 'cascade'}, 'model': {}}  # read features
    save_checkpoint(old, str(tmp_path / 'old.pt'))
    with pytest.raises(UserError, match='older version of selectorTrain.py; retrain the selector'):
        load_selector(str(tmp_path / 'old.pt'))
    save_checkpoint({**old, 'selector_inputs': SELECTOR_INPUTS}, str(tmp_path / 'new.pt'))
    assert load_selector(str(tmp_path / 'new.pt'))['selector_inputs'] == SELECTOR_INPUTS
    last = {key: value for key, value in old.items() if key != 'routing'}  # routing goes into best.pt only
    save_checkpoint({**last, 'selector_inputs': SELECTOR_INPUTS, 'optimizer': {}}, str(tmp_path / 'last.pt'))
    with pytest.raises(UserError, match="last.pt' is the selector's training state, for --resume; pass the best.pt"):
        load_selector(str(tmp_path / 'last.pt'))
