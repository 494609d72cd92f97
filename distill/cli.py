"""The arguments every training script shares, settings a stage inherits from the checkpoints it builds on,
and the wrapper that turns user errors into one line."""
import argparse
import dataclasses
import functools
import math
import os
import re
import signal
import sys
import tempfile
import threading

import torch

from models import STEM_STRIDES, build_model, smallest_image_size, stem_stride_for, takes_image_size

from . import UserError, flag_of
from .data import DATASETS, NATIVE_SIZE, default_dataset
from .engine import TrainSettings, check_run_free
from .folder_cache import default_cache_dir
from .pretrained import IMAGENET, RANDOM, check_source, initialise
from .runtime import amp_dtype, check_training_fits, process_rank, resolve_device, world_size

# The data settings a later stage takes from the checkpoint it builds on, unless given explicitly.
DATA_SETTINGS = ('dataset', 'data_dir', 'subset', 'test_subset', 'image_size', 'val_size', 'route_size', 'seed')
# Of those, the ones that change which images train and validate: an explicit different value is a conflict.
SPLIT_SETTINGS = ('dataset', 'subset', 'image_size', 'val_size', 'route_size', 'seed')


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every real default, and none for flags whose default is 'not given'."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or '%(default)' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with every real default in --help and its errors as one line (no usage block)."""

    def __init__(self, *args, **kwargs):  # no abbreviations: given_flags must see every flag by its name
        super().__init__(*args, formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f'error: {message}; see {self.prog} --help\n')


def training_parser(description: str, *, out: str, epochs: int, lr: float, batch_size: int = 128,
                    label_smoothing: bool = True, inherits: str | None = None,
                    out_help: str = 'run directory for checkpoints and logs') -> argparse.ArgumentParser:
    """inherits: which checkpoint's data settings a data flag left out is taken from (for the help text)."""
    p = Parser(description=description)
    def default(own: str = '') -> str:  # a stage that inherits its data settings says so, not its own default
        return f' (default: as {inherits} was trained)' if inherits else f' (default: {own})' if own else ''
    data = p.add_argument_group('data' + (f': left out, each is taken from {inherits}' if inherits else ''))
    data.add_argument('--dataset', choices=DATASETS,
                      help='cifar10 and cifar100 download with torchvision; folder reads --data-dir' + default(
                          'folder when --data-dir is an archive, or it or a folder in it holds train/ and test/; '
                          'else cifar10'))
    data.add_argument('--data-dir', default=None if inherits else 'data',
                      help='download folder for CIFAR; for folder: a directory, .tar.gz or .zip holding '
                           'train/<class>/* and test/<class>/*' + default())
    data.add_argument('--data-cache', default=default_cache_dir(),
                      help='where a decoded image folder or archive, or CIFAR enlarged, is kept on disk and mapped '
                           'from, by this run and the next; it needs room for the decoded set, 3 bytes a pixel '
                           '($DISTILL_CACHE)')
    data.add_argument('--subset', type=int, help='use the first N training images, class-balanced' + default('all'))
    data.add_argument('--test-subset', type=int, help='use the first N test images, class-balanced' + default('all'))
    data.add_argument('--image-size', type=int,
                      help='resize every image whole to S x S' + default("32, CIFAR's size"))
    held_out = default('10%% of the training images, at most 5000')
    data.add_argument('--val-size', type=int, help='held-out images for picking the best epoch' + held_out)
    data.add_argument('--route-size', type=int, help='held-out images for the selector' + held_out)
    run = p.add_argument_group('run')
    run.add_argument('--epochs', type=int, default=epochs, help='passes over the training images')
    run.add_argument('--batch-size', type=int, default=batch_size, help='global batch size, split across ranks')
    run.add_argument('--lr', type=float, default=lr, help='peak learning rate (SGD, Nesterov momentum)')
    run.add_argument('--weight-decay', type=float, default=5e-4, help='L2 on weights (not on biases or norms)')
    run.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    run.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warm-up before the cosine decay')
    if label_smoothing:
        run.add_argument('--label-smoothing', type=float, default=0.0,
                         help='smooth the cross-entropy targets by this much (0 to 1)')
    run.add_argument('--seed', type=int, default=None if inherits else 0,
                     help='fixes the split, the initialisation and the augmentation' + default())
    add_device_arguments(run)
    run.add_argument('--compile', action='store_true', help='torch.compile the model')
    run.add_argument('--out', default=out, help=out_help)
    run.add_argument('--resume', action='store_true', help='continue from OUT/last.pt')
    run.add_argument('--overwrite', action='store_true', help='start afresh even if OUT already holds a run')
    return p


def train_settings(args) -> TrainSettings:
    """What the training loop takes of a training script's flags; all of them are recorded with the run."""
    taken = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings) if f.name != 'record'}
    return TrainSettings(**taken, record=dict(vars(args)))


def add_device_arguments(parser):
    parser.add_argument('--device', default='auto', help='auto (a GPU if there is one), cpu, cuda or cuda:N')
    parser.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'off'), default='auto',
                        help='mixed precision. auto: on CUDA bf16 where supported, else fp16; on a CPU bf16 where '
                             'a convolution timed at start runs clearly faster in bf16 (native bf16 that pays), '
                             'else off (float32)')


def given_flags(argv) -> set:
    """The settings named on the command line (dest names), to tell an explicit value from a default."""
    argv = sys.argv[1:] if argv is None else argv
    return {a[2:].split('=')[0].replace('-', '_') for a in map(str, argv) if a.startswith('--')}


def inherit_data_settings(args, argv, config: dict, source: str):
    """Take each data setting left out from `config` (the checkpoint this stage builds on); an explicit
    value that would change the split is refused in one line naming it."""
    given = given_flags(argv)
    for key in DATA_SETTINGS:
        if key in given:
            if key in SPLIT_SETTINGS and key in config and config[key] != getattr(args, key):
                flag = flag_of(key)
                then = f'{flag} {config[key]}' if config[key] is not None else f'{flag} left at its default'
                raise UserError(f"{flag} {getattr(args, key)} differs from '{source}', trained with {then}; leave "
                                f"{flag} out to inherit it, or retrain that stage")
        elif key in config:
            setattr(args, key, config[key])
    for key, default in (('data_dir', 'data'), ('seed', 0)):
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


MAX_SEED = 2 ** 32 - 1  # what every generator the seed feeds accepts


def check_range(name: str, value, low=None, high=None):
    """A flag's number must be finite (nan passes every comparison) and within [low, high] where given."""
    if value is None:
        return
    flag = flag_of(name)
    if not math.isfinite(value):
        raise UserError(f'{flag} must be a finite number (got {value})')
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f'between {low} and {high}' if low is not None and high is not None else \
                 f'at least {low}' if low is not None else f'at most {high}'
        raise UserError(f'{flag} must be {bounds} (got {value})')


def check_positive(name: str, value):
    check_range(name, value)
    if value is not None and value <= 0:
        raise UserError(f'{flag_of(name)} must be positive (got {value})')


def check_distinct(name: str, values: list):
    if len(set(values)) < len(values):
        raise UserError(f"{flag_of(name)} repeats a value ({', '.join(map(str, values))}); "
                        f"give each once")


def add_model_arguments(parser, choices, default: str, arch_help: str):
    """--arch and the stem it is built with: the model_args of a classifier's checkpoint."""
    model = parser.add_argument_group('model')
    model.add_argument('--arch', default=default, choices=choices, help=arch_help)
    model.add_argument('--stem-stride', type=int, choices=STEM_STRIDES,
                       help="how much the network's stem shrinks an image before its first block: 1 keeps every "
                            "pixel (CIFAR's stem), 4 is torchvision's ImageNet stem (default: by image size, 1 "
                            "below 64 px, 2 below 128 px, else 4)")
    model.add_argument('--init', default=RANDOM,
                       help=f"the weights to start from: {RANDOM}, {IMAGENET} (torchvision's "
                            "ImageNet-trained weights, downloaded once; all but the classifier fit at stem stride 4, "
                            "all but it and the stem below), or a file of saved weights or a run directory, whose "
                            "tensors that fit are copied")


def classifier_args(args, trained_at_it: str = '') -> dict:
    """The model_args of the classifier a training script builds, stored in its checkpoints; the stem stride
    chosen is also set in args, so that the run's config names it. An image size too small for the pooling
    fails deep inside the first batch, so it is refused here, in one line; so are --init weights that cannot be
    read. trained_at_it: the checkpoint whose image size this is, to be retrained."""
    if not _resumes(args):
        check_source(args.arch, args.init)
    size = args.image_size or NATIVE_SIZE
    model_args = {'stem_stride': args.stem_stride or stem_stride_for(size)}
    if takes_image_size(args.arch, size, **model_args):
        args.stem_stride = model_args['stem_stride']
        return model_args
    smallest = smallest_image_size(args.arch, above=size, **model_args) or 'more than 1024'
    larger = f'--image-size {smallest} or more'
    larger = f"retrain '{trained_at_it}' with {larger}" if trained_at_it else f'pass {larger}'
    smaller_stem = next((s for s in reversed(STEM_STRIDES) if s < model_args['stem_stride']
                         and takes_image_size(args.arch, size, stem_stride=s)), None)
    fix = f"pass --stem-stride {smaller_stem}, or {larger.removeprefix('pass ')}" if smaller_stem else larger
    stem = f' and stem stride {args.stem_stride}' if args.stem_stride else ''
    raise UserError(f"--image-size {size} is too small for {args.arch}{stem}, whose pooling needs at least "
                    f"{smallest} px; {fix}")


def initial_model(args, data, model_args: dict) -> torch.nn.Module:
    """The classifier a training script starts from: random weights fixed by --seed, then those of --init that
    fit. A run that resumes takes its weights from last.pt instead. A batch too large for a CPU's memory is one
    line here, before any training."""
    torch.manual_seed(args.seed)
    model = build_model(args.arch, len(data.classes), **model_args)
    device = resolve_device(args.device)
    check_training_fits(model, data.image_size, min(args.batch_size, len(data.parts['train'])), device,
                        amp_dtype(args.amp, device))
    if args.init != RANDOM and not _resumes(args):
        said = initialise(model, args.arch, args.init)
        if process_rank() == 0:  # torchrun's processes start alike: one says so
            print(said, flush=True)
    return model


def _resumes(args) -> bool:
    return args.resume and os.path.exists(os.path.join(args.out, 'last.pt'))


def validate_args(args):
    """Reject impossible settings up front, in one line each; returns args."""
    for name in ('epochs', 'image_size', 'subset', 'test_subset'):
        check_range(name, getattr(args, name, None), low=1)
    # The global batch, shared evenly by torchrun's processes: BatchNorm cannot train on fewer than 2 images each.
    check_range('batch_size', args.batch_size, low=2 * world_size())
    if args.batch_size % world_size():
        raise UserError(f'--batch-size {args.batch_size} must divide evenly over the {world_size()} processes '
                        f'torchrun started; pass a multiple of {world_size()}')
    for name in ('val_size', 'route_size'):
        check_range(name, getattr(args, name, None), low=0)
    check_range('seed', args.seed, 0, MAX_SEED)
    args.dataset = args.dataset or default_dataset(args.data_dir)  # a stage that inherits it overrides this
    check_positive('lr', args.lr)
    check_range('weight_decay', args.weight_decay, low=0)
    check_range('momentum', args.momentum, 0, 1)
    check_range('warmup_epochs', args.warmup_epochs, low=0)
    check_range('label_smoothing', getattr(args, 'label_smoothing', None), 0, 1)
    if getattr(args, 'label_smoothing', None) == 1:
        raise UserError('--label-smoothing 1 makes every target uniform, so there is nothing to learn; pass a value '
                        'below 1 (0.1 is usual)')
    amp_dtype(args.amp, resolve_device(args.device))  # a device or precision this machine lacks, before any data
    if args.out is not None:  # else the script names the run after its settings, then checks
        check_run_dir(args)
    return args


def check_run_dir(args):
    """Before any data or model: the run directory can be written, and holds no run this one would replace
    unasked."""
    check_writable(os.path.join(args.out, 'last.pt'))
    check_run_free(args.out, args.resume, args.overwrite)


def check_writable(path: str):
    """Refuse an output file that cannot be written before any model runs, not after; creates nothing."""
    if os.path.isdir(path) or path.endswith(('/', os.sep)):
        raise UserError(f"'{path}' is a folder, not a file name; choose another output path")
    folder = existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot create the folder '{folder}' for '{path}': '{existing}' is a file; "
                        f"choose another path")
    try:  # a real file, not os.access: root passes every permission check, and some filesystems refuse files
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UserError(f"cannot write to '{existing}' (for '{path}'; {err.strerror}); choose another path") from None


def check_spared(out: str, reads: list):
    """A run never writes its checkpoints over one that it reads, --overwrite or not."""
    written = {os.path.realpath(os.path.join(out, name)) for name in ('best.pt', 'last.pt')}
    for path in reads:
        if os.path.realpath(path) in written:
            raise UserError(f"--out '{out}' would write over '{path}', which this run reads; choose another --out")


def checkpoint_path(path: str) -> str:
    """A run directory stands for its best.pt."""
    return os.path.join(path, 'best.pt') if os.path.isdir(path) else path


def _stop(signum, frame):
    raise KeyboardInterrupt


def _out_of_memory(err) -> str | None:
    """What an allocator that ran out of memory tried to allocate, from its message (CPU or CUDA); else None."""
    found = re.search(r"(?:can't allocate memory|out of memory).*?[Tt]ried to allocate ([\d.]+) ?(\w+)", str(err),
                      re.DOTALL)
    if not found:
        return None
    amount, unit = found.groups()
    return 'tried to allocate ' + (f'{int(amount) / 2 ** 30:.1f} GiB' if unit == 'bytes' else f'{amount} {unit}')


def _runtime_failure(err) -> str | None:
    """The one line for a runtime failure the user can fix (memory, a missing compiler); None for the rest."""
    chain = [err, err.__cause__, err.__context__]
    if any(type(e).__name__ == 'InvalidCxxCompiler' for e in chain) or 'InvalidCxxCompiler' in str(err):
        return ('--compile found no working C++ compiler, which torch.compile builds its kernels with; install g++ '
                '(or name another in CXX), or run without --compile')
    if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and not _out_of_memory(err):
        return None
    return (f'out of memory ({_out_of_memory(err) or err.__class__.__name__}); pass a smaller --batch-size, or a '
            f'smaller --image-size where the stage has one')


def main_guard(main):
    """Run main(); a UserError, a runtime failure the user can fix, Ctrl-C or SIGTERM ends with one line on
    stderr and a non-zero exit code; a closed standard output ends it quietly."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop) if in_main_thread else None  # else killed mid-write
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print('error: ' + ' '.join(str(err).split()), file=sys.stderr)  # one line, even when err quotes a library's
            sys.exit(2)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            line = _runtime_failure(err)
            if line is None:
                raise
            print('error: ' + line, file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # the reader of standard output quit (infer.py --out - | head): end as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's flush at exit fails again
            sys.exit(141)
        except KeyboardInterrupt:
            print('interrupted; no output was left half-written (a training run continues from its last finished '
                  'epoch with --resume)', file=sys.stderr)
            sys.exit(130)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return wrapped
