"""The test-set report evaluate.py writes: accuracy, compression, markdown, and the mean ± std over runs
that differ only by --seed."""
import os
import platform
import statistics

import torch

from . import UserError
from .checkpoint import atomic_write
from .engine import autocast, write_json
from .metrics import measure_latency


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def speed(fn, images: torch.Tensor, amp=None) -> dict:
    """ms for one image, and images/s at the batch size given (under autocast to amp, if given)."""
    with autocast(images.device, amp):
        one = measure_latency(fn, images[:1], warmup=1, repeats=5)
        many = measure_latency(fn, images, warmup=1, repeats=3)
    return {'latency_ms': 1000 * one, 'images_per_s': len(images) / many}


def markdown(result: dict) -> str:
    teacher = result['compression'].get('teacher')
    lines = [f"# {result['name']}", '', f"Test split: {result['test_images']} images of `{result['dataset']}`; "
             f"device for timings: {result['device']}; precision: {result.get('precision', 'float32')}.",
             '', '## Accuracy', '',
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


# Settings that may differ between the runs one mean ± std is taken over (paths name a seed's own runs).
PER_SEED = {'seed', 'out', 'experts', 'teacher', 'resume', 'overwrite'}


def seeds_of(configs: list) -> list:
    """The seed of each run; refuses runs that differ in anything but the seed, or share one."""
    seeds = [c['seed'] for c in configs]
    if len(set(seeds)) < len(seeds):
        raise UserError(f'the selectors share a seed ({seeds}); pass one selector per --seed')
    differ = sorted(k for c in configs[1:] for k in c.keys() | configs[0].keys()
                    if k not in PER_SEED and c.get(k) != configs[0].get(k))
    if differ:
        raise UserError(f"the selectors differ in {', '.join(dict.fromkeys(differ))}, not only the seed; "
                        'mean ± std is taken over runs that differ only by --seed')
    return seeds


def aggregate(name: str, results: list) -> dict:
    """Mean and sample std (n - 1) over seeds of every accuracy row all results share, and of the routing mix."""
    rows = [k for k in results[0]['accuracy'] if all(k in r['accuracy'] for r in results)]
    accuracy = {}
    for row in rows:
        accs = [r['accuracy'][row][0] for r in results]
        macs = [r['accuracy'][row][1] for r in results]
        accuracy[row] = {'mean': statistics.mean(accs), 'std': statistics.stdev(accs), 'per_seed': accs,
                         'macs': statistics.mean(macs)}
    return {'name': name, 'dataset': results[0]['dataset'], 'test_images': results[0]['test_images'],
            'seeds': [r['seed'] for r in results], 'reports': [r['name'] for r in results], 'accuracy': accuracy,
            'left_out': sorted({k for r in results for k in r['accuracy']} - set(rows)),
            'share': {e: statistics.mean(r['share'][e] for r in results) for e in results[0]['share']}}


def aggregate_markdown(summary: dict) -> str:
    seeds = summary['seeds']
    lines = [f"# {summary['name']}: mean ± std over seeds {', '.join(map(str, seeds))}", '',
             f"Test split: {summary['test_images']} images of `{summary['dataset']}`. Std is the sample std (n - 1) "
             f"over {len(seeds)} runs that differ only by --seed (split, initialisation, augmentation); "
             f"per-seed reports: {', '.join(summary['reports'])}.", '',
             '| model or routing | test accuracy | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | MMACs / image |',
             '|---' * (len(seeds) + 3) + '|']
    for row, a in summary['accuracy'].items():
        macs = '—' if a['macs'] != a['macs'] else f"{a['macs'] / 1e6:.1f}"
        lines.append(f"| {row} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f}% | "
                     + ' | '.join(f'{100 * x:.2f}%' for x in a['per_seed']) + f' | {macs} |')
    lines += ['', 'Mean share of images routed: '
              + ', '.join(f'{n} {100 * s:.1f}%' for n, s in summary['share'].items())]
    if summary['left_out']:
        lines.append(f"Left out (not in every seed's report): {', '.join(summary['left_out'])}.")
    return '\n'.join(lines) + '\n'


def write_report(folder: str, name: str, result: dict, table: str):
    """results/<name>.json and .md, and the table on stdout."""
    write_json(os.path.join(folder, f'{name}.json'), result)
    with atomic_write(os.path.join(folder, f'{name}.md')) as f:
        f.write(table)
    print(table)
