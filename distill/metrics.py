"""Measurements: accuracy, parameters, MACs (torch.utils.flop_counter) and latency."""
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .runtime import autocast, synchronize


def weights_mb(model: torch.nn.Module) -> float:
    """Size of the weights and buffers: what a deployment ships (checkpoints also hold optimiser state)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2 ** 20


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, example, device='cpu') -> int:
    """Multiply-accumulates of one forward pass on one input (flop_counter counts 2 FLOPs per MAC).

    example: one input (a batch of 1), or an image size S for a 3 x S x S image."""
    was_training = model.training
    model.eval()
    if isinstance(example, int):
        example = torch.zeros(1, 3, example, example, device=device)
    weight = next(model.parameters(), None)
    example = example if weight is None else example.to(weight.device)  # count where the model is
    with FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return counter.get_total_flops() // 2


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item() if len(labels) else float('nan')


def paired_lead(right: torch.Tensor, reference_right: torch.Tensor) -> tuple:
    """(accuracy lead over the reference, its standard error), from the difference image by image on the same
    images: how far a lead stands from the noise of these images (not from that of another training run)."""
    difference = right.double() - reference_right.double()
    error = (difference.std() / math.sqrt(len(difference))).item() if len(difference) > 1 else math.nan
    return difference.mean().item(), error


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list:
    """Each class's accuracy; None for a class with no images here (a test split without it), not 0%."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).tolist()
    total = torch.bincount(labels, minlength=num_classes).tolist()
    return [c / t if t else None for c, t in zip(correct, total)]


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted ones."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, num_classes)


def share_per_class(choice: torch.Tensor, labels: torch.Tensor, num_choices: int, num_classes: int) -> list:
    """For each choice (expert), the fraction of each class's images that went to it; None for a class with
    no images here, as in per_class_accuracy."""
    counts = confusion_matrix(choice, labels, max(num_choices, num_classes))[:num_classes, :num_choices].float()
    total = counts.sum(1)
    shares = (counts / total.clamp(min=1)[:, None]).T.tolist()
    return [[share if n else None for share, n in zip(row, total.tolist())] for row in shares]


def in_calls(fn, size: int):
    """fn on images in calls of `size`, as a script runs a folder batch by batch."""
    return lambda images: [fn(images[i:i + size]) for i in range(0, len(images), size)]


@torch.inference_mode()
def time_in_turns(fns: dict, images: torch.Tensor, amp=None, rounds: int = 5, latency: bool = True,
                  warmup: int = 2) -> dict:
    """name -> seconds per image at this batch, images/s and (with latency) milliseconds for one image alone,
    each the best of `rounds` after `warmup` calls, the functions taking turns within each round so that
    drift in the machine's speed hits them all alike; and every round's seconds per image, from which a ratio
    of two functions can be taken round by round (round_ratios) to show how much it moves."""
    def each_round(x):
        seconds = {name: [] for name in fns}
        with autocast(x.device, amp):
            for fn in fns.values():  # warm-up: cuDNN autotuning, the allocator, oneDNN's primitives
                for _ in range(warmup):
                    fn(x)
            for _ in range(rounds):
                for name, fn in fns.items():
                    synchronize(x.device)
                    start = time.perf_counter()
                    fn(x)
                    synchronize(x.device)
                    seconds[name].append(time.perf_counter() - start)
        return seconds
    many = each_round(images)
    one = each_round(images[:1]) if latency else {name: [float('nan')] for name in fns}
    return {name: {'seconds_per_image': min(many[name]) / len(images), 'images_per_s': len(images) / min(many[name]),
                   'latency_ms': 1000 * min(one[name]), 'batch_size': len(images),
                   'rounds_seconds_per_image': [s / len(images) for s in many[name]]} for name in fns}


def round_ratios(timed: dict, reference: dict) -> list:
    """The ratio of two time_in_turns entries in each round, where both ran one after the other: how far a
    measured ratio moves with the machine (empty for timings without rounds)."""
    return [t / r for t, r in zip(timed.get('rounds_seconds_per_image', []),
                                  reference.get('rounds_seconds_per_image', []))]


def time_model(fn, images: torch.Tensor, amp=None, rounds: int = 5) -> dict:
    """time_in_turns for one function."""
    return time_in_turns({'model': fn}, images, amp, rounds)['model']
