"""distill/routing/selection.py: the selector's training step and score, and the cascade's tuning images."""
import torch

from distill.engine import WarmupCosine, build_optimizer, train_one_epoch
from distill.loaders import TensorLoader
from distill.routing.decisions import confidences
from distill.routing.selection import SelectorScore, cascade_inputs, selection_step
from models import build_model


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
    score = SelectorScore(torch.tensor([1.0, 2.0]))
    before = score(selector, val)[1]
    for epoch in range(5):
        train.set_epoch(epoch)
        train_one_epoch(selector, train, optimizer, scheduler, selection_step(selector, 2.0))
    after = score(selector, val)[1]  # its accuracy over its cost range: from 50% at either end to 100% between
    assert after > 0.7 and after > before + 0.15, (before, after)
    score.cost_weight = 0.0  # an operating point: each image to the expert it rates likelier right
    assert score(selector, val)[1] > 0.9


def test_cascade_inputs_are_the_plain_images_of_each_split():
    logits = {'route': torch.randn(12, 3), 'val': torch.randn(4, 3)}  # route: 3 images, then 3 copies of them
    outputs = {part: ([x, 2 * x], None) for part, x in logits.items()}
    correct = {part: torch.rand(len(x), 2) for part, x in logits.items()}
    alone = {part: torch.rand(len(x), 2) for part, x in logits.items()}
    conf, right, right_alone = cascade_inputs(outputs, correct, alone, {'route': 3, 'val': 4})
    assert torch.equal(right, torch.cat([correct['route'][:3], correct['val']]))
    assert torch.equal(right_alone, torch.cat([alone['route'][:3], alone['val']]))
    plain = torch.cat([logits['route'][:3], logits['val']])
    assert torch.allclose(conf, confidences([plain, 2 * plain]))
