"""distill/routing/report.py: both modes against their references, and the gap to the oracle they close."""
import torch

from distill.metrics import paired_lead
from distill.routing.decisions import switch_weights
from distill.routing.report import (answer_text, cost_weight_text, experts_line, gap_closed_text, lead_text,
                                    ranking_verdict, route_line, routing_report)


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
    assert report['lead']['selector'] == (0.5, paired_lead(torch.ones(4), torch.tensor([0.0, 0, 1, 1]))[1])


def test_the_ends_of_the_selectors_sweep_say_what_they_do():
    weights = switch_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 3.0]))
    assert cost_weight_text(weights[0]) == '-1e+09 (every image sent to the costliest expert)'
    assert cost_weight_text(weights[-1]) == '1e+09 (every image kept by the cheapest expert)'
    assert cost_weight_text(0.00309829) == '0.00309829'


def test_each_lead_is_shown_in_points_with_its_standard_error():
    assert lead_text({'cascade': (0.0022, 0.0015), 'selector': (-0.0004, 0.0012)}) == ('cascade +0.22 ± 0.15, '
                                                                                       'selector -0.04 ± 0.12')


def test_a_committee_routing_is_scored_on_its_answers_and_each_expert_alone_on_its_own():
    labels = torch.tensor([0, 2])
    cheap = torch.tensor([[5.0, 0, 0], [0.0, 2, 1.5]])  # image 1: sure of neither, class 2 a close second
    costly = torch.tensor([[5.0, 0, 0], [0.0, 1.9, 2]])  # image 1: right, but barely
    wrong = torch.tensor([[5.0, 0, 0], [0.0, 2, 0]])  # image 1: wrong, and sure of it
    costs = {'time': torch.tensor([1.0, 3.0]), 'macs': torch.tensor([10.0, 30.0])}
    routing = {'mode': 'cascade', 'thresholds': [0.9], 'cost_weight': 0.0, 'cost': 'time', 'answer': 'committee'}
    args = (labels, torch.zeros(2, 2), costs, {'time': 0.0, 'macs': 0.0})
    rows = routing_report([cheap, costly], *args, routing)['rows']
    assert rows['expert:1']['accuracy'] == 1.0 and rows['cascade']['accuracy'] == 0.5  # the average says class 1
    rows = routing_report([cheap, wrong], *args, routing)['rows']
    assert rows['expert:1']['accuracy'] == 0.5 and rows['cascade']['accuracy'] == 0.5
    rows = routing_report([cheap, costly], *args, {**routing, 'answer': 'expert'})['rows']
    assert rows['cascade']['accuracy'] == 1.0 and rows['oracle']['accuracy'] == 1.0
    assert 'average of its expert' in answer_text(routing) and 'alone' in answer_text({})  # older selectors


def test_the_selectors_ranking_is_placed_between_the_cascades_and_the_best_possible():
    references = {'chance': 0.8757, 'confidence': 0.8845, 'best possible': 0.9139}
    assert ranking_verdict(0.8845, references) == (
        "the selector ranks val images at 88.45%: +0.00 points from the cheap expert's confidence (88.45%, the "
        "cascade's ranking), 0% of the way to the best possible ranking (91.39%)")
    halfway = ranking_verdict(0.8992, references)
    assert '+1.47 points' in halfway and '50% of the way' in halfway
    assert 'of the way' not in ranking_verdict(0.9, {**references, 'best possible': 0.8845})  # no room above
    assert ranking_verdict(0.9, {}) == ('the selector ranks val images at 90.00% (no reference rankings for more '
                                        'than two experts)')


def test_selector_training_names_each_experts_cost_and_accuracy_on_what_it_learns_from():
    class E:
        def __init__(self, name, seconds, macs):
            self.name, self.macs = name, macs
            self.cost = {'seconds_per_image': seconds, 'device': 'GPU X', 'batch_size': 256}
    experts = [E('googlenet', 0.001, 452e6), E('densenet121', 0.0025, 888e6)]
    assert experts_line(experts) == ('experts, cheapest first: googlenet 1.000 ms/img, 452 MMACs, densenet121 '
                                     '2.500 ms/img, 888 MMACs (GPU X, batch 256)')
    correct = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert route_line(experts, correct, 1).endswith('(4 images): expert accuracy googlenet 50.00%, densenet121 75.00%')
