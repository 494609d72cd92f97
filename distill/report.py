"""The test-set report evaluate.py writes: accuracy, compression, the cost-weight sweep, markdown."""
import platform

import torch

from .metrics import count_params, measure_latency
from .routing import expert_correctness, normalised_costs, route


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def speed(fn, images: torch.Tensor) -> dict:
    """ms for one image, and images/s at the batch size given."""
    one = measure_latency(fn, images[:1], warmup=1, repeats=5)
    many = measure_latency(fn, images, warmup=1, repeats=3)
    return {'latency_ms': 1000 * one, 'images_per_s': len(images) / many}


def compression_row(model, macs: int, images: torch.Tensor) -> dict:
    """Params, MACs, weights in MB (what a deployment ships; checkpoints also hold optimiser state) and speed."""
    if model is None:
        return {'params': None, 'macs': macs, 'size_mb': None}
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    row = {'params': count_params(model), 'macs': macs, 'size_mb': size / 2 ** 20}
    return {**row, **speed(model, images)}


def cost_weight_sweep(expert_logits: list, labels, scores, macs: list, selector_macs: int, weights) -> list:
    """(cost weight, accuracy, mean MACs per image) of routing at each weight, from precomputed outputs."""
    correct = expert_correctness(expert_logits, labels).cpu()
    costs, macs_t = normalised_costs(macs), torch.tensor(macs, dtype=torch.float64)
    points = []
    for w in weights:
        choice = route(scores.cpu(), costs, w)
        points.append((w, correct.gather(1, choice[:, None]).mean().item(), selector_macs + macs_t[choice].mean().item()))
    return points


def markdown(result: dict) -> str:
    teacher = result['compression'].get('teacher')
    lines = [f"# {result['name']}", '', f"Test split: {result['test_images']} images of `{result['dataset']}`; "
             f"device for timings: {result['device']}.", '', '## Accuracy', '',
             '| model or routing | test accuracy | MMACs / image |', '|---|---|---|']
    for name, (acc, macs) in result['accuracy'].items():
        lines.append(f"| {name} | {100 * acc:.2f}% | {'—' if macs != macs else f'{macs / 1e6:.1f}'} |")
    lines += ['', 'Share of images routed: ' + ', '.join(f'{n} {100 * s:.1f}%' for n, s in result['share'].items()),
              '', '## Compression', '',
              '| model | params (M) | MMACs / image | weights (MB) | latency, batch 1 (ms) | images/s, batch '
              f"{result['batch_size']} | MACs vs teacher |", '|---|---|---|---|---|---|---|']
    for name, row in result['compression'].items():
        ratio = f"{row['macs'] / teacher['macs']:.2f}x" if teacher else '—'
        params = f"{row['params'] / 1e6:.2f}" if row['params'] else '—'
        size = f"{row['size_mb']:.1f}" if row['size_mb'] else '—'
        lines.append(f"| {name} | {params} | {row['macs'] / 1e6:.1f} | {size} | {row['latency_ms']:.1f} | "
                     f"{row['images_per_s']:.0f} | {ratio} |")
    lines += ['', '## Cost-weight sweep', '', '| cost weight | accuracy | MMACs / image |', '|---|---|---|']
    lines += [f'| {w:g} | {100 * a:.2f}% | {m / 1e6:.1f} |' for w, a, m in result['sweep']]
    return '\n'.join(lines) + '\n'
