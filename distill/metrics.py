"""Measurements: accuracy, parameters, MACs (torch.utils.flop_counter) and latency."""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def weights_mb(model: torch.nn.Module) -> float:
    """Size of the weights and buffers: what a deployment ships (checkpoints also hold optimiser state)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2 ** 20


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, image_size: int, device='cpu') -> int:
    """Multiply-accumulates of one forward pass on one image (flop_counter counts 2 FLOPs per MAC)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item() if len(labels) else float('nan')


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list:
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).float()
    total = torch.bincount(labels, minlength=num_classes).float()
    return (correct / total.clamp(min=1)).tolist()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted ones."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, num_classes)


def share_per_class(choice: torch.Tensor, labels: torch.Tensor, num_choices: int, num_classes: int) -> list:
    """For each choice (expert), the fraction of each class's images that went to it."""
    counts = confusion_matrix(choice, labels, max(num_choices, num_classes))[:num_classes, :num_choices].float()
    return (counts / counts.sum(1, keepdim=True).clamp(min=1)).T.tolist()


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_latency(fn, inputs: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds per call of fn(inputs)."""
    for _ in range(warmup):
        fn(inputs)
    times = []
    for _ in range(repeats):
        synchronize(inputs.device)
        start = time.perf_counter()
        fn(inputs)
        synchronize(inputs.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
