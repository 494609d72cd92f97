"""distill/routing/decisions.py: the decisions of both modes and the choice of an operating point on val."""
import pytest
import torch

from distill.routing.decisions import (cascade_choice, cascade_cost, choose_point, choose_routing, confidences,
                                       COST_WEIGHTS, answer_logits, answer_of, deferral_accuracy, expert_correctness,
                                       extra_costs, paired_margin,
                                       pick_mode, ranking_references, selector_choice, selector_cost, selector_inputs,
                                       selector_sweep)


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


@pytest.mark.parametrize('num_experts', [2, 3])
def test_deferral_accuracy_scores_the_ranking_not_the_routing_at_weight_0(num_experts):
    gen = torch.Generator().manual_seed(0)
    correct = [(torch.rand(3000, generator=gen) < 0.8).float()]
    for _ in range(num_experts - 1):  # each costlier expert right wherever the cheaper ones are, and on more
        correct.append(torch.maximum(correct[-1], (torch.rand(3000, generator=gen) < 0.5).float()))
    correct = torch.stack(correct, 1)
    costs = torch.arange(1.0, num_experts + 1)
    # Knows exactly where each expert is right, but always rates the costliest a little higher: at weight 0
    # every image goes there, as with a selector that learned nothing.
    knowing = 6 * correct - 3 + torch.linspace(0, 0.5, num_experts)
    assert selector_choice(knowing, extra_costs(costs), 0.0).eq(num_experts - 1).all()
    chance = torch.randn(3000, num_experts, generator=gen)
    ends = (correct[:, 0].mean().item() + correct[:, -1].mean().item()) / 2  # chance's straight line, on average
    assert deferral_accuracy(chance, correct, costs) == pytest.approx(ends, abs=0.01)
    assert deferral_accuracy(knowing, correct, costs) > ends + 0.03
    assert deferral_accuracy(knowing, correct, costs) <= correct.max(1).values.mean().item()


def test_a_selector_is_judged_against_chance_the_cheap_experts_confidence_and_the_best_ranking():
    # right: both, only the costlier, only the cheap one, neither; the cheap expert least sure of image 1
    correct = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    conf = torch.tensor([[0.9, 1.0], [0.3, 1.0], [0.6, 1.0], [0.8, 1.0]])
    references = ranking_references(conf, correct, torch.tensor([1.0, 3.0]))
    # Per image, cost 1 kept and 4 sent on; each image sent on moves the cost by 0.75. The best ranking sends
    # image 1 (+0.25 accuracy), then 0 and 3 (no change), then 2 (-0.25); confidence sends 1, then 2, 3, 0.
    assert references['chance'] == pytest.approx(0.5)
    assert references['best possible'] == pytest.approx((0.625 * 0.75 + 0.75 * 1.5 + 0.625 * 0.75) / 3)
    assert references['confidence'] == pytest.approx((0.625 * 0.75 * 2 + 0.5 * 1.5) / 3)
    three = torch.ones(4, 3)
    assert ranking_references(three, three, torch.tensor([1.0, 2.0, 3.0])) == {}


def test_the_selector_sweep_finds_the_point_between_the_fixed_weights():
    # A perfect ranking with small margins: the later expert is a little likelier right everywhere, a little
    # more where the cheap one errs. Every fixed weight sends all images one way or the other.
    cheap_right = torch.arange(100) % 4 != 0
    correct = torch.stack([cheap_right.float(), torch.ones(100)], 1)
    p_later = 0.5 + torch.where(cheap_right, 0.001, 0.003)
    scores = torch.logit(torch.stack([torch.full((100,), 0.5), p_later], 1))
    costs = torch.tensor([1.0, 3.0])

    def cheapest_at_full_accuracy(points):
        return min(cost for _, accuracy, cost in points if accuracy == 1.0)
    assert cheapest_at_full_accuracy(selector_sweep(scores, correct, costs, weights=COST_WEIGHTS)) == 4.0
    assert cheapest_at_full_accuracy(selector_sweep(scores, correct, costs)) == pytest.approx(1 + 3 * 0.25)


def test_the_selector_reads_the_cheap_experts_probabilities_largest_first():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    inputs = selector_inputs(logits)
    assert torch.allclose(inputs, torch.softmax(logits, 1).sort(1, descending=True).values)
    assert torch.allclose(inputs.sum(1), torch.ones(2)) and (inputs[:, :-1] >= inputs[:, 1:]).all()


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
        margins = [paired_margin(choice, correct, correct[:, 1], z) for choice in (cheap, mixed)]
        assert choose_point(points, 0.80, margins) == (expected, 2)
    assert paired_margin(cheap, correct, correct[:, 1], 1.0) == pytest.approx(22 ** 0.5 / 100)  # one more than seen
    # where no point clears the target by its margin, the cheapest that reaches it, as without one; the
    # reference itself never clears its own accuracy
    reference = ('reference', 0.80, 3.0)
    margins = [paired_margin(c, correct, correct[:, 1], 1.645) for c in (cheap, torch.ones(100, dtype=torch.long))]
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


def test_the_cascade_may_be_tuned_on_more_held_out_images_and_is_still_compared_on_val():
    # On val alone the cheap expert's answers at 0.6 look safe (right on the one there); on the larger tuning
    # set half of them are wrong, so the cascade passes them on, and its val outcome is what is compared.
    conf = torch.tensor([[0.99, 0.9], [0.6, 0.9], [0.3, 0.9]])
    correct = torch.tensor([[1., 1], [1., 1], [0., 1]])
    tuning_correct = torch.tensor([[1., 1]] * 4 + [[0., 1]] * 3)
    tuning = (torch.tensor([[0.99, 0.9]] * 2 + [[0.6, 0.9]] * 4 + [[0.3, 0.9]]), tuning_correct, tuning_correct)
    costs = torch.tensor([1.0, 4.0])
    alone = choose_routing(conf, torch.zeros(3, 2), correct, costs, 0.0, 0.0)
    assert alone['mode'] == 'cascade' and alone['thresholds'] == [0.5]
    routing = choose_routing(conf, torch.zeros(3, 2), correct, costs, 0.0, 0.0, cascade_tuning=tuning)
    assert routing['thresholds'] == [0.7] and routing['val']['cascade'] == pytest.approx((1.0, 1 + 2 / 3 * 4))


def test_confidences_are_each_experts_top_probability():
    conf = confidences([torch.tensor([[0.0, 0.0]]), torch.tensor([[10.0, 0.0]])])
    assert conf[0, 0] == pytest.approx(0.5) and conf[0, 1] > 0.99


def test_a_committee_answers_a_costlier_experts_images_with_its_average_with_the_cheapest():
    cheap, costly, third = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    assert answer_logits([cheap, costly], 'expert')[1] is costly
    answers = answer_logits([cheap, costly, third], 'committee')
    assert torch.equal(answers[0], cheap)
    for k, theirs in ((1, costly), (2, third)):
        assert torch.allclose(answers[k].exp(), (cheap.softmax(1) + theirs.softmax(1)) / 2)
    assert answer_of({}) == 'expert' and answer_of({'answer': 'committee'}) == 'committee'  # older selectors


def test_committee_answers_reach_the_costlier_experts_own_accuracy_more_cheaply():
    # Images 2 and 3 are right only in the committee's answer (image 2: both experts wrong alone, their average
    # right). The target stays the costlier expert alone (3 of 4): answering with the committee, the cascade
    # reaches it sending two images on; answering with the costlier expert alone it must send three.
    conf = torch.tensor([[0.99, 0.9], [0.7, 0.9], [0.6, 0.9], [0.3, 0.9]])
    alone = torch.tensor([[1., 1], [0., 1], [0., 0], [0., 1]])
    committee = torch.tensor([[1., 1], [0., 1], [0., 1], [0., 1]])
    costs = torch.tensor([1.0, 4.0])
    routing = choose_routing(conf, torch.zeros(4, 2), committee, costs, 0.0, 0.0, alone=alone)
    assert routing['target_accuracy'] == 0.75 and routing['thresholds'] == [0.7]
    assert routing['val']['cascade'] == (0.75, 3.0)
    as_alone = choose_routing(conf, torch.zeros(4, 2), alone, costs, 0.0, 0.0)
    assert as_alone['thresholds'] == [0.75] and as_alone['val']['cascade'] == (0.75, 4.0)
    stricter = choose_routing(conf, torch.zeros(4, 2), committee, costs, 0.0, 0.0)  # target: the committee's own
    assert stricter['target_accuracy'] == 1.0
