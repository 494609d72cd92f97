"""The arguments every training script shares, and the wrapper that turns user errors into one line."""
import argparse
import functools
import os
import sys

import torch

from . import UserError
from .data import DATASETS


def training_parser(description: str, *, out: str, epochs: int, lr: float, batch_size: int = 128) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group('data')
    data.add_argument('--dataset', choices=DATASETS, default='cifar10')
    data.add_argument('--data-dir', default='data', help='download folder for CIFAR; for folder: a directory or '
                      '.tar.gz holding train/<class>/* and test/<class>/*')
    data.add_argument('--subset', type=int, help='use the first N training images, class-balanced')
    data.add_argument('--test-subset', type=int, help='use the first N test images, class-balanced')
    data.add_argument('--image-size', type=int, help='resize images to S x S (default: 32, CIFAR\'s own size)')
    data.add_argument('--val-size', type=int, help='held-out images for picking the best epoch (default 10%%, <= 5000)')
    data.add_argument('--route-size', type=int, help='held-out images for the selector (default 10%%, <= 5000)')
    run = p.add_argument_group('run')
    run.add_argument('--epochs', type=int, default=epochs)
    run.add_argument('--batch-size', type=int, default=batch_size, help='global batch size, split across ranks')
    run.add_argument('--lr', type=float, default=lr, help='peak learning rate (SGD, Nesterov momentum)')
    run.add_argument('--weight-decay', type=float, default=5e-4)
    run.add_argument('--momentum', type=float, default=0.9)
    run.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warm-up before the cosine decay')
    run.add_argument('--label-smoothing', type=float, default=0.0)
    run.add_argument('--seed', type=int, default=0, help='fixes the split, the initialisation and the augmentation')
    run.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    add_amp_argument(run)
    run.add_argument('--compile', action='store_true', help='torch.compile the model')
    run.add_argument('--out', default=out, help='run directory for checkpoints and logs')
    run.add_argument('--resume', action='store_true', help='continue from OUT/last.pt')
    run.add_argument('--overwrite', action='store_true', help='start afresh even if OUT already holds a run')
    return p


def add_amp_argument(parser):
    parser.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'off'), default='auto',
                        help='mixed precision. auto: on CUDA bf16 where supported, else fp16; on CPU bf16 where the '
                             'CPU has it natively (AVX512-BF16 or AMX; 1.6-2x fp32), else off (float32)')


def validate_args(args):
    """Reject impossible settings up front, in one line each; returns args."""
    for name in ('epochs', 'batch_size', 'image_size', 'subset', 'test_subset'):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if args.lr <= 0:
        raise UserError(f'--lr must be positive (got {args.lr})')
    amp_dtype(args.amp, resolve_device(args.device))  # a device or precision this machine lacks, before any data
    return args


def check_writable(path: str):
    """Refuse an output file that cannot be written before any model runs, not after."""
    folder = os.path.dirname(path) or '.'
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a folder, not a file name; choose another output path")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder '{folder}' for '{path}' ({err.strerror}); "
                        f"choose another path") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write to '{folder}' (for '{path}'); choose another path")


def resolve_device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA device is visible; use --device cpu')
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and 'LOCAL_RANK' in os.environ:  # torchrun: one GPU per process
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN then trains these models 1.6-2x faster in bf16 than in fp32
    (benchmarks/run.py); elsewhere bf16 is emulated and slower than fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ('_is_avx512_bf16_supported',
                                                                          '_is_amx_tile_supported'))


def amp_dtype(name: str, device: torch.device):
    """The autocast dtype for --amp on this device, or None for full precision."""
    if name == 'off':
        return None
    if device.type != 'cuda':
        if name == 'fp16':
            raise UserError('--amp fp16 needs CUDA; on CPU use --amp bf16 or --amp off')
        return torch.bfloat16 if name == 'bf16' or cpu_has_native_bf16() else None
    if name == 'fp16' or (name == 'auto' and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def precision_name(amp) -> str:
    """'bfloat16', 'float16' or 'float32': what an --amp setting resolved to, for summaries and reports."""
    return str(amp or torch.float32).removeprefix('torch.')


def main_guard(main):
    """Run main(); a UserError or Ctrl-C ends with one line on stderr and a non-zero exit code."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print('error: ' + ' '.join(str(err).split()), file=sys.stderr)  # one line, even when err quotes a library's
            sys.exit(2)
        except KeyboardInterrupt:
            print('interrupted; no output was left half-written (a training run continues from its last finished '
                  'epoch with --resume)', file=sys.stderr)
            sys.exit(130)
    return wrapped
