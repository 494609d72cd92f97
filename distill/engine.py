"""One training loop for the teacher, the students and the selector.

Each stage hands `fit` a step function step(images, labels, indices) -> (loss, logits),
the idea of timm's tasks without the framework. `fit` owns the rest: optimiser, schedule,
mixed precision, checkpoints, resume, logs and the final test report.
"""
import csv
import functools
import json
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse
from tqdm import tqdm

from . import UserError
from .checkpoint import (atomic_write, check_compatible, load_checkpoint, model_from_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .cli import amp_dtype, precision_name, resolve_device
from .data import Loader, Prepared
from .metrics import count_macs, count_params

METRIC_FIELDS = ('epoch', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr', 'seconds')


def build_optimizer(model, lr: float, weight_decay: float, momentum: float = 0.9):
    """SGD with Nesterov momentum; no weight decay on biases and norm parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


class WarmupCosine:
    """Multiplier for LambdaLR: linear warm-up, then cosine decay to zero, per step."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total, self.warmup = max(total_steps, 1), max(warmup_steps, 0)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(self.total - self.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def place(model, device: torch.device):
    """Move a model to the device in channels_last: NHWC is what tensor cores want, and oneDNN on
    CPU trains these models faster in it too (benchmarks/run.py, README "Speed")."""
    return model.to(device, memory_format=torch.channels_last)


def fuse_for_inference(model):
    """An eval-mode copy with each BatchNorm folded into the convolution before it (torch.fx): the same
    outputs up to float rounding, 0.95-1.16x the images/s on CPU (benchmarks/run.py, README "Speed").
    A model torch.fx cannot trace comes back unfused."""
    try:
        return fuse(model.eval())
    except Exception:  # tracing fails on data-dependent control flow; fusing is only an optimisation
        return model.eval()


def inference_model(state: dict, path: str, device: torch.device):
    """The model of a loaded checkpoint, on the device, fused and in eval mode."""
    return fuse_for_inference(place(model_from_checkpoint(state, path), device))


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def reduce_sums(*values, device):
    """Sum values over ranks when running under torchrun."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def train_one_epoch(model, loader, optimizer, scheduler, step, *, amp=None, scaler=None, desc='train'):
    """One pass over the loader. Returns (mean loss, accuracy); stops on a non-finite loss.

    A step that returns no logits (the selector's: its outputs are not class scores) gets accuracy nan."""
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    quiet = None if loader.rank == 0 else True  # None: a bar on terminals only
    bar = tqdm(loader, desc=desc, leave=False, disable=quiet, dynamic_ncols=True)
    logits = None
    for images, labels, indices in bar:
        with autocast(device, amp):
            loss, logits = step(images, labels, indices)
        if not torch.isfinite(loss):
            raise UserError(f'the loss became {loss.item()} ({desc}, batch {bar.n}); lower --lr or use --amp off. '
                            f'last.pt still holds the last finished epoch')
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().double() * len(labels)
        if logits is not None:
            correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    loss_sum, correct, seen = reduce_sums(loss_sum.item(), correct.item(), seen, device=device)
    return loss_sum / max(seen, 1), (correct / max(seen, 1) if logits is not None else float('nan'))


@torch.inference_mode()
def predict_logits(model, loader, amp=None):
    """Logits and labels for the whole loader, in order, as float32 on the loader's device."""
    model.eval()
    outputs, labels = [], []
    for images, batch_labels, _ in loader:
        with autocast(loader.device, amp):
            outputs.append(model(images).float())
        labels.append(batch_labels)
    return torch.cat(outputs), torch.cat(labels)


def evaluate(model, loader, amp=None):
    """(mean cross-entropy, accuracy) of a classifier over the loader."""
    logits, labels = predict_logits(model, loader, amp)
    loss = F.cross_entropy(logits, labels, reduction='sum').item()
    correct = (logits.argmax(1) == labels).sum().item()
    loss, correct, seen = reduce_sums(loss, correct, len(labels), device=loader.device)
    return loss / max(seen, 1), correct / max(seen, 1)


def _write_outputs(out: str, history: list, config: dict):
    with atomic_write(os.path.join(out, 'metrics.csv')) as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    write_json(os.path.join(out, 'config.json'), config)


def write_json(path: str, payload: dict):
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2)


def init_distributed(device: torch.device):
    """(device, rank, world size). Under torchrun: one process per GPU (nccl) or per CPU worker (gloo)."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world == 1:
        return device, 0, 1
    dist = torch.distributed
    if device.type == 'cuda':
        torch.cuda.set_device(device)  # resolve_device gave this rank its own GPU
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return device, dist.get_rank(), world


def _barrier(world: int):
    if world > 1:
        torch.distributed.barrier()


# What may differ on --resume: where things are, how fast they run and what is tested, not what is trained.
RESUME_MAY_CHANGE = {'resume', 'overwrite', 'out', 'device', 'amp', 'compile', 'data_dir', 'cache_dir', 'teacher',
                     'teacher_logits', 'experts', 'test_subset'}


def check_same_run(saved: dict, asked: dict, path: str):
    """Refuse to resume with other settings: the restored schedule would silently keep the old ones (a
    longer --epochs would train its extra epochs at lr 0)."""
    changed = [k for k in asked if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != asked[k]]
    if changed:
        was = ', '.join(f"--{k.replace('_', '-')} {saved[k]} (now {asked[k]})" for k in changed)
        raise UserError(f"'{path}' was trained with {was}; resume with its settings, or start afresh with "
                        f"--overwrite or another --out")


def fit(args, arch: str, model, make_step, data: Prepared, *, train_part: str = 'train', evaluate_fn=evaluate,
        num_outputs: int | None = None, extra: dict | None = None, device=None, on_epoch_start=None, calibrate=None):
    """Train `model` on data.parts[train_part], keep the best epoch by val accuracy, checkpoint every
    epoch, then report the best epoch once on the test set.

    make_step(training_model) -> step: the step is built on the model as trained (compiled, or wrapped
    in DistributedDataParallel under torchrun), so gradients are synchronised across ranks.
    evaluate_fn(model, loader, amp) -> (loss, accuracy) scores val and test (classification by default).
    extra: plain values stored in every checkpoint (the teacher's path, the selector's experts, ...).
    on_epoch_start(train_loader) runs before each epoch (a logit cache loads that epoch's logits).
    calibrate(model) -> dict runs on the best epoch's weights before the test set is touched, to tune settings on
    val (the selector's cost weight); its dict is stored in best.pt and the summary.
    Returns the summary dict that is also written to OUT/summary.json (by rank 0).
    """
    device, rank, world = init_distributed(device or resolve_device(args.device))
    if args.batch_size % world:
        raise UserError(f'--batch-size {args.batch_size} must divide evenly over {world} processes')
    log = print if rank == 0 else (lambda *a, **k: None)
    amp = amp_dtype(args.amp, device)
    out = args.out
    last_path, best_path = os.path.join(out, 'last.pt'), os.path.join(out, 'best.pt')
    if os.path.exists(last_path) and not (args.resume or args.overwrite):
        raise UserError(f"'{out}' already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        f"or --out NEW_DIR")
    num_outputs = num_outputs or len(data.classes)
    model = place(model, device)
    loader = functools.partial(Loader, batch_size=args.batch_size, mean=data.mean, std=data.std, device=device,
                               rank=rank, world=world)
    train_loader = loader(data.train, data.parts[train_part], train=True, seed=args.seed)
    val_loader = loader(data.train, data.parts['val'])
    optimizer = build_optimizer(model, args.lr, args.weight_decay, args.momentum)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler('cuda') if amp == torch.float16 else None
    config = dict(vars(args))
    start_epoch, best_val_acc, history = 0, -1.0, []

    if args.resume and os.path.exists(last_path):
        state = load_checkpoint(last_path, map_location=device)
        check_compatible(state, last_path, arch=arch, num_classes=num_outputs, split=data.split,
                         image_size=data.image_size)
        check_same_run(state['config'], config, last_path)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        start_epoch, best_val_acc, history = state['epoch'], state['best_val_acc'], state['history']
        set_rng_state(state['rng'])
        log(f'resumed {last_path} at epoch {start_epoch}/{args.epochs}')
    elif args.resume:
        log(f'no {last_path} to resume from; starting afresh')

    train_model = model
    if world > 1:
        if device.type == 'cuda':  # BN statistics over the global batch, as in a single-process run
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if args.compile:
        train_model = torch.compile(train_model)
    step = make_step(train_model)
    precision = precision_name(amp)  # what --amp auto resolved to on this machine
    base = {'arch': arch, 'num_classes': num_outputs, 'class_names': data.classes, 'image_size': data.image_size,
            'mean': data.mean, 'std': data.std, 'split': data.split, 'config': config, 'precision': precision,
            **(extra or {})}
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        train_loader.set_epoch(epoch)
        if on_epoch_start:
            on_epoch_start(train_loader)
        train_loss, train_acc = train_one_epoch(train_model, train_loader, optimizer, scheduler, step, amp=amp,
                                                scaler=scaler, desc=f'{arch} epoch {epoch + 1}/{args.epochs}')
        val_loss, val_acc = evaluate_fn(model, val_loader, amp)
        row = {'epoch': epoch + 1, 'train_loss': round(train_loss, 5), 'train_acc': round(train_acc, 5),
               'val_loss': round(val_loss, 5), 'val_acc': round(val_acc, 5),
               'lr': round(optimizer.param_groups[0]['lr'], 6), 'seconds': round(time.time() - started, 2)}
        history.append(row)
        if rank == 0:
            state = {**base, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                     'scheduler': scheduler.state_dict(), 'epoch': epoch + 1, 'history': history, 'rng': rng_state()}
            if val_acc > best_val_acc:
                save_checkpoint({**state, 'best_val_acc': val_acc}, best_path)
            save_checkpoint({**state, 'best_val_acc': max(val_acc, best_val_acc)}, last_path)
            _write_outputs(out, history, config)
        best_val_acc = max(val_acc, best_val_acc)
        shown_acc = '' if math.isnan(train_acc) else f' acc {train_acc:.2%}'  # the selector's step has no accuracy
        log(f"{arch} epoch {epoch + 1}/{args.epochs}  train loss {train_loss:.4f}{shown_acc}  "
            f"val loss {val_loss:.4f} acc {val_acc:.2%}  lr {row['lr']:.4g}  {row['seconds']:.1f}s", flush=True)

    # The test set is touched once, with the weights chosen on val.
    _barrier(world)
    best = load_checkpoint(best_path, map_location=device)
    model.load_state_dict(best['model'])
    tuned = calibrate(model) if calibrate else {}
    if rank == 0 and any(best.get(key) != value for key, value in tuned.items()):
        save_checkpoint({**best, **tuned}, best_path)
    test_loss, test_acc = evaluate_fn(model, loader(data.test, torch.arange(len(data.test))), amp)
    summary = {'arch': arch, 'best_val_acc': best_val_acc, 'test_acc': test_acc, 'test_loss': test_loss,
               'epochs': args.epochs, 'precision': precision, 'params': count_params(model),
               'macs': count_macs(model, data.image_size, device), 'train_images': len(data.parts[train_part]),
               **tuned}
    if rank == 0:
        write_json(os.path.join(out, 'summary.json'), summary)
    log(f'{arch}: best val acc {best_val_acc:.2%}, test acc {test_acc:.2%} -> {out}/summary.json', flush=True)
    _barrier(world)
    return summary
