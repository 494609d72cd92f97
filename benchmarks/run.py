"""Speed benchmarks, every figure measured side by side in one run (not tests).

    python benchmarks/run.py --quick                 # a few minutes on a 2-core CPU
    python benchmarks/run.py --selector checkpoints/selector/best.pt   # routed inference with real routing
    python benchmarks/run.py --compile                # also torch.compile (minutes of compiling more)

    python benchmarks/run.py --parts infer --selector checkpoints/selector/best.pt   # inference figures only

Prints a table and writes benchmarks/results/<host>.json (<host>-quick.json with --quick, <host>-infer.json
with --parts infer, ...) with a stable key per figure.
"""
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.inference_speed import decode_figures, inference_figures, routing_models  # noqa: E402
from benchmarks.training_speed import kd_figures, training_figures  # noqa: E402
from distill.checkpoint import write_json  # noqa: E402
from distill.cli import Parser, check_writable, main_guard  # noqa: E402
from distill.data import ImageSet  # noqa: E402
from distill.runtime import amp_dtype, configure, device_name, precision_name, resolve_device  # noqa: E402

PARTS = ('train', 'kd', 'infer', 'routed', 'decode')


def fake_data(n, size=32, classes=10):
    gen = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen),
                    torch.arange(n) % classes, [str(c) for c in range(classes)])


@main_guard
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true',
                   help='64 images at batch 32: checks that every figure runs, in a few minutes (figures are noisy)')
    p.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                   help='which figures: training (engine vs reference, FLOP/s, threads), KD cost, inference (each '
                        'model and routing mode, with variants: BatchNorm folding, float32, NCHW), routed (inference '
                        'without the variants), decode (reading photos: whole, or at reduced scale)')
    p.add_argument('--device', default='auto', help='auto (a GPU if there is one), cpu, cuda or cuda:N')
    p.add_argument('--selector', help='a trained selector checkpoint, for routed inference with a real routing mix')
    p.add_argument('--compile', action='store_true',
                   help='also measure torch.compile for training and (with weight freezing) inference; minutes more')
    p.add_argument('--out', help='where the JSON goes (default: benchmarks/results/<host>[-quick][-parts].json)')
    args = p.parse_args()
    # A quick or partial run never replaces the full run's JSON.
    suffix = ('-quick' if args.quick else '') + ('' if set(args.parts) == set(PARTS) else '-' + '-'.join(args.parts))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                   f'{platform.node()}{suffix}.json')
    check_writable(out)  # before minutes of measuring, not after
    device = resolve_device(args.device)
    configure(device)
    torch.manual_seed(0)
    n, batch = (64, 32) if args.quick else ((8192, 512) if device.type == 'cuda' else (256, 64))
    data = fake_data(n)
    amp = amp_dtype('auto', device)  # what every script runs with by default on this device
    results = {'device': device_name(device), 'torch': torch.__version__, 'precision': precision_name(amp),
               'batch_size': batch, 'images': n, 'parts': args.parts}
    # first: a bad --selector fails before training
    routing = routing_models(args.selector, data, n, device, amp) if {'infer', 'routed'} & set(args.parts) else None
    if 'train' in args.parts:
        training_figures(results, data, batch, device, amp, args.compile)
    if 'kd' in args.parts:
        kd_figures(results, data, batch, device, amp)
    if 'infer' in args.parts or 'routed' in args.parts:
        inference_figures(results, routing, device, amp, args.compile, variants='infer' in args.parts)
    if 'decode' in args.parts:
        decode_figures(results, 2 if args.quick else 8)

    width = max(map(len, results))
    for key, value in results.items():
        print(f'{key:<{width}}  {value:.3g}' if isinstance(value, float) else f'{key:<{width}}  {value}')
    write_json(out, results)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
