import torch

from distill.data import ImageSet, Loader
from distill.engine import WarmupCosine, build_optimizer, train_one_epoch
from distill.routing import (RoutedAccuracy, choose_cost_weight, cost_weight_sweep, expert_correctness, normalised_costs,
                             predict, route, routing_report, selection_step)
from models import build_model


def test_targets_say_which_experts_are_right():
    labels = torch.tensor([0, 1, 2])
    a = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]])  # right, wrong, right
    b = torch.tensor([[0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])  # wrong, right, right
    assert expert_correctness([a, b], labels).tolist() == [[1, 0], [0, 1], [1, 1]]


def test_route_trades_accuracy_against_cost():
    scores = torch.tensor([[2.0, 1.0], [-1.0, 0.5], [3.0, 2.9]])  # logits of P(expert right)
    costs = normalised_costs([900e6, 450e6])
    assert route(scores, costs, 0.0).tolist() == [0, 1, 0]
    assert route(scores, costs, 10.0).tolist() == [1, 1, 1]  # a large weight always picks the cheapest
    assert route(scores, costs, 0.05).tolist() == [0, 1, 1]  # small gaps go to the cheaper expert


class Counting(torch.nn.Module):
    """An expert that predicts class `c` and records every image it is shown."""

    def __init__(self, c, classes=4):
        super().__init__()
        self.c, self.classes, self.seen = c, classes, []

    def forward(self, x):
        self.seen.append(x.clone())
        out = torch.zeros(len(x), self.classes)
        out[:, self.c] = 1.0
        return out


class BrightnessSelector(torch.nn.Module):
    def forward(self, x):
        bright = x.mean((1, 2, 3))
        return torch.stack([bright, -bright], 1)  # bright images -> expert 0, dark -> expert 1


def test_predict_runs_each_expert_only_on_its_own_images():
    images = torch.randn(10, 3, 4, 4)
    experts = [Counting(0), Counting(1)]
    logits, choice = predict(BrightnessSelector(), experts, images, normalised_costs([1, 1]))
    expected = (images.mean((1, 2, 3)) < 0).long()
    assert torch.equal(choice, expected)
    assert torch.equal(logits.argmax(1), expected)  # reassembled in input order
    for e, expert in enumerate(experts):
        assert len(expert.seen) == 1 and torch.equal(expert.seen[0], images[expected == e])
    assert sum(len(x) for expert in experts for x in expert.seen) == len(images)  # no image runs twice


def test_predict_skips_an_expert_nobody_is_routed_to():
    images = torch.ones(5, 3, 4, 4)
    experts = [Counting(0), Counting(1)]
    predict(BrightnessSelector(), experts, images, normalised_costs([1, 1]))
    assert experts[1].seen == []


def test_report_compares_routing_with_its_references():
    labels = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])  # right on the first half, 90% confident
    b = torch.tensor([[0.0, 1], [0.0, 1], [0.0, 1], [0.0, 1]])  # right on the second half
    perfect = torch.tensor([[1.0, -1], [1.0, -1], [-1, 1.0], [-1, 1.0]])
    report = routing_report([a, b], labels, perfect, [400, 100], selector_macs=10)
    rows = report['rows']
    assert rows['routed'] == (1.0, 10 + 0.5 * 400 + 0.5 * 100)
    assert rows['oracle'][0] == 1.0 and rows['best single'][0] == 0.5 and rows['expert:1'] == (0.5, 100)
    assert rows['max confidence'][1] == 500 and report['share'] == [0.5, 0.5]


def test_selector_learns_a_synthetic_rule_well_above_chance():
    # Expert 0 is right on bright images, expert 1 on dark ones: the selector must learn brightness.
    gen = torch.Generator().manual_seed(0)
    n = 512
    bright = torch.rand(n, generator=gen) < 0.5
    base = torch.where(bright, 170, 60).view(n, 1, 1, 1)
    images = (base + torch.randint(-40, 40, (n, 3, 8, 8), generator=gen)).clamp(0, 255).to(torch.uint8)
    data = ImageSet(images, torch.zeros(n, dtype=torch.long), ['x'])
    targets = torch.stack([bright, ~bright], 1).float()
    torch.manual_seed(0)
    selector = build_model('selector', 2)
    train, val = torch.arange(384), torch.arange(384, n)
    loader = Loader(data, train, 32, [0.45] * 3, [0.25] * 3, train=True)
    optimizer = build_optimizer(selector, 0.05, 5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(3 * len(loader), len(loader)))
    for epoch in range(3):
        loader.set_epoch(epoch)
        train_one_epoch(selector, loader, optimizer, scheduler, selection_step(selector, targets))
    val_loader = Loader(data, val, 64, [0.45] * 3, [0.25] * 3)
    selector.eval()
    with torch.no_grad():
        chosen = torch.cat([route(selector(x), normalised_costs([1, 1])) for x, _, _ in val_loader])
    accuracy = (chosen == (~bright[val]).long()).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_routed_accuracy_runs_experts_once_per_loader():
    data = ImageSet(torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8), torch.arange(12) % 2, ['a', 'b'])
    loader = Loader(data, torch.arange(12), 5, [0.5] * 3, [0.2] * 3)

    class E:
        def __init__(self, model):
            self.model, self.macs = model, 1
    experts = [E(Counting(0, 2)), E(Counting(1, 2))]
    metric = RoutedAccuracy(experts)
    loss, acc = metric(BrightnessSelector(), loader)
    metric(BrightnessSelector(), loader)
    assert len(experts[0].model.seen) == 3  # 3 batches, one pass
    assert 0 <= acc <= 1 and loss > 0


def test_sweep_never_costs_more_as_the_weight_grows():
    torch.manual_seed(0)
    logits, labels, scores = [torch.randn(50, 3), torch.randn(50, 3)], torch.randint(0, 3, (50,)), torch.randn(50, 2)
    points = cost_weight_sweep(logits, labels, scores, [900, 400], 10, (0.0, 0.5, 1.0, 10.0))
    macs = [m for _, _, m in points]
    assert macs == sorted(macs, reverse=True) and macs[-1] == 410


def test_the_chosen_cost_weight_is_the_cheapest_within_the_allowed_accuracy_drop():
    sweep = [(0.0, 0.80, 900), (0.1, 0.81, 800), (0.2, 0.795, 600), (0.5, 0.78, 400), (1.0, 0.60, 400)]
    assert choose_cost_weight(sweep, 0.0) == 0.1  # the most accurate point
    assert choose_cost_weight(sweep, 0.02) == 0.2
    assert choose_cost_weight(sweep, 0.04) == 0.5
    assert choose_cost_weight(sweep, 1.0) == 0.5  # as cheap as 1.0 and more accurate
