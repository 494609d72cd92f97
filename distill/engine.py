"""One training loop for the teacher, the students and the selector.

Each stage hands `fit` a step function step(inputs, labels, indices) -> (loss, logits), the idea of
timm's tasks without the framework. `fit` owns the rest: optimiser, schedule, checkpoints, resume,
logs and the one final test report. Devices and precision live in runtime.py.
"""
import csv
import dataclasses
import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import full_model_args

from . import UserError, flag_of
from .checkpoint import (atomic_write, changed_settings, check_compatible, load_checkpoint, one_run_writing,
                         rng_state, save_checkpoint, set_rng_state, write_json)
from .data import Prepared
from .loaders import split_loader
from .metrics import count_macs, count_params
from .runtime import (amp_dtype, autocast, barrier, configure, device_name, init_distributed, place, precision_name,
                      precision_text, process_rank, reduce_sums, resolve_device)

METRIC_FIELDS = ('epoch', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr', 'seconds', 'train_img_per_s')
FINITE_CHECK_EVERY = 50  # steps between host checks of the loss: one sync per check, not per step


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What `fit` needs to know of a run. Scripts build it from their flags (`cli.train_settings`)."""
    out: str
    epochs: int
    batch_size: int  # global, split across ranks
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = 'auto'
    amp: str = 'auto'
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    # Every setting of the run as asked, stored in its checkpoints: a resume must match it, and later stages
    # inherit their data settings from it. Empty: these fields.
    record: dict = dataclasses.field(default_factory=dict)

    def config(self) -> dict:
        return dict(self.record) or {k: v for k, v in dataclasses.asdict(self).items() if k != 'record'}


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


class NonFiniteLoss(UserError):
    pass


def _stop_if_not_finite(non_finite: torch.Tensor, desc: str, batch: int):
    if non_finite.item():
        raise NonFiniteLoss(f'the loss became non-finite (nan or inf) by batch {batch} ({desc}); lower --lr or use '
                            f'--amp off')


def train_one_epoch(model, loader, optimizer, scheduler, step, *, amp=None, scaler=None, desc='train'):
    """One pass over the loader. Returns (mean loss, accuracy).

    Nothing in the step waits for the device: losses and hits are summed on it, and a non-finite loss is
    checked every FINITE_CHECK_EVERY steps and at the end, so it stops the run within that many steps.
    A step that returns no logits (the selector's: its outputs are not class scores) gets accuracy nan."""
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    non_finite = torch.zeros((), dtype=torch.bool, device=device)
    seen, logits, batch = 0, None, 0
    quiet = None if loader.rank == 0 else True  # None: a bar on terminals only
    for batch, (inputs, labels, indices) in enumerate(tqdm(loader, desc=desc, leave=False, disable=quiet,
                                                           dynamic_ncols=True), 1):
        with autocast(device, amp):
            loss, logits = step(inputs, labels, indices)
        non_finite |= ~torch.isfinite(loss.detach())
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
            correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if batch % FINITE_CHECK_EVERY == 0:
            _stop_if_not_finite(non_finite, desc, batch)
    _stop_if_not_finite(non_finite, desc, batch)
    loss_sum, correct, seen = reduce_sums(loss_sum.item(), correct.item(), seen, device=device)
    return loss_sum / max(seen, 1), (correct / max(seen, 1) if logits is not None else float('nan'))


@torch.inference_mode()
def predict_logits(model, loader, amp=None):
    """Outputs and labels for the whole loader, in order, as float32 on the loader's device."""
    model.eval()
    outputs, labels = [], []
    for inputs, batch_labels, _ in loader:
        with autocast(loader.device, amp):
            outputs.append(model(inputs).float())
        labels.append(batch_labels)
    return torch.cat(outputs), torch.cat(labels)


def evaluate(model, loader, amp=None):
    """(mean cross-entropy, accuracy) of a classifier over the loader."""
    logits, labels = predict_logits(model, loader, amp)
    loss = F.cross_entropy(logits, labels, reduction='sum').item()
    correct = (logits.argmax(1) == labels).sum().item()
    loss, correct, seen = reduce_sums(loss, correct, len(labels), device=loader.device)
    return loss / max(seen, 1), correct / max(seen, 1)


def check_same_run(saved: dict, asked: dict, path: str):
    """Refuse to resume with other settings: the restored schedule would silently keep the old ones (a
    longer --epochs would train its extra epochs at lr 0)."""
    changed = [k for k in changed_settings(saved, asked) if k in saved]
    if changed:
        was = ', '.join(f"{flag_of(k)} {saved[k]} (now {asked[k]})" for k in changed)
        raise UserError(f"'{path}' was trained with {was}; resume with its settings, or start afresh with "
                        f"--overwrite or another --out")


RUN_FILES = ('metrics.csv', 'config.json', 'summary.json')


def check_run_free(out: str, resume: bool, overwrite: bool):
    """A run replaces the one in `out` only when told to (--overwrite), and resumes only one that is there."""
    last, best = os.path.join(out, 'last.pt'), os.path.join(out, 'best.pt')
    if overwrite:
        return
    if os.path.exists(last) and not resume:
        raise UserError(f"'{out}' already holds a run; pass --resume to continue it, --overwrite to "
                        f"replace it, or --out NEW_DIR")
    if os.path.exists(best) and not os.path.exists(last):  # weights from elsewhere, say
        raise UserError(f"'{best}' exists, with no last.pt to resume from; pass --overwrite to replace it, "
                        f"or --out NEW_DIR")
    if not os.path.exists(last):  # a run writes these beside last.pt: without it, they are someone else's files
        for name in RUN_FILES:
            if os.path.exists(os.path.join(out, name)):
                raise UserError(f"'{os.path.join(out, name)}' exists but no run does; pass --overwrite to replace "
                                f"it, or --out NEW_DIR")


class Run:
    """The files of one training run: OUT/last.pt (everything, for --resume), OUT/best.pt (weights and
    metadata only: what inference and later stages need), metrics.csv, config.json and summary.json."""

    def __init__(self, out: str, config: dict, base: dict):
        self.out, self.config, self.base = out, config, base
        self.last, self.best = os.path.join(out, 'last.pt'), os.path.join(out, 'best.pt')

    def restore(self, model, optimizer, scheduler, scaler, map_location):
        """(start epoch, best val accuracy, history) from last.pt, after checking it is the same run."""
        state = load_checkpoint(self.last, map_location=map_location)
        check_compatible(state, self.last, arch=self.base['arch'], num_classes=self.base['num_classes'],
                         split=self.base['split'], image_size=self.base['image_size'])
        check_same_run(state['config'], self.config, self.last)
        built, asked = (full_model_args(self.base['arch'], s.get('model_args', {})) for s in (state, self.base))
        if built != asked:  # a stem without weights of its own (a pool) would load its weights silently
            differ = [k for k in built if built[k] != asked[k]]
            was = ', '.join(f'{flag_of(k)} {built[k]} (now {asked[k]})' for k in differ)
            fix = ' '.join(f'{flag_of(k)} {built[k]}' for k in differ)
            raise UserError(f"'{self.last}' holds a model built with {was}; resume with {fix}, or start afresh "
                            f"with --overwrite or another --out")
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        set_rng_state(state['rng'])
        return state['epoch'], state['best_val_acc'], state['history']

    def save_epoch(self, model, optimizer, scheduler, scaler, epoch, val_acc, best_val_acc, history):
        weights = {**self.base, 'model': model.state_dict(), 'epoch': epoch}
        if val_acc > best_val_acc:
            save_checkpoint({**weights, 'best_val_acc': val_acc}, self.best)
        save_checkpoint({**weights, 'best_val_acc': max(val_acc, best_val_acc), 'optimizer': optimizer.state_dict(),
                         'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict() if scaler else None,
                         'history': history, 'rng': rng_state()}, self.last)
        with atomic_write(os.path.join(self.out, 'metrics.csv')) as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(history)
        write_json(os.path.join(self.out, 'config.json'), self.config)


def default_loaders(data: Prepared, train_part: str, batch_size: int, seed: int, device, rank: int, world: int):
    """Image loaders over the split: augmented training batches, plain val and test batches."""
    shared = {'seed': seed, 'rank': rank, 'world': world}
    return {'train': split_loader(data, train_part, batch_size, device, train=True, **shared),
            **{part: split_loader(data, part, batch_size, device, **shared) for part in ('val', 'test')}}


def _one_run_per_out(fit):
    """fit held as the one run writing settings.out (by torchrun's rank 0, for all its processes): a second run
    launched into the same folder would mix its checkpoints and logs with the first's."""
    @functools.wraps(fit)
    def held(settings: TrainSettings, *args, **kwargs):
        with one_run_writing(settings.out, process_rank()):
            return fit(settings, *args, **kwargs)
    return held


@_one_run_per_out
def fit(settings: TrainSettings, arch: str, model, make_step, data: Prepared, *, train_part: str = 'train',
        loaders=None, evaluate_fn=evaluate, num_outputs: int | None = None, extra: dict | None = None, device=None,
        on_epoch_start=None, calibrate=None):
    """Train `model` on data.parts[train_part], keep the best epoch by val accuracy, checkpoint every
    epoch, then report the best epoch once on the test set.

    make_step(training_model) -> step: the step is built on the model as trained (compiled, or wrapped
    in DistributedDataParallel under torchrun), so gradients are synchronised across ranks.
    loaders: {'train', 'val', 'test'} to train on something other than the split's images (the selector).
    evaluate_fn(model, loader, amp) -> (loss, accuracy) scores val and test (classification by default).
    extra: plain values stored in every checkpoint (the teacher's path, the selector's experts, ...).
    on_epoch_start(train_loader) runs before each epoch (a logit cache loads that epoch's logits).
    calibrate(model) -> dict runs on the best weights before the test set is touched, to tune settings on
    val (the selector's routing); its dict is stored in best.pt and the summary.
    Returns the summary dict that is also written to OUT/summary.json (by rank 0).
    """
    device, rank, world = init_distributed(device or resolve_device(settings.device))
    configure(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    amp = amp_dtype(settings.amp, device)
    precision = precision_name(amp)  # what --amp auto resolved to on this machine
    num_outputs = num_outputs or len(data.classes)
    config = settings.config()
    run = Run(settings.out, config,
              {'arch': arch, 'num_classes': num_outputs, 'class_names': data.classes, 'image_size': data.image_size,
               'mean': data.mean, 'std': data.std, 'split': data.split, 'config': config,
               'precision': precision, **(extra or {})})
    check_run_free(run.out, settings.resume, settings.overwrite)
    model = place(model, device)
    if loaders is None:
        loaders = default_loaders(data.to(device), train_part, settings.batch_size, settings.seed, device, rank,
                                  world)
    train_loader = loaders['train']
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay, settings.momentum)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(settings.epochs * steps, round(settings.warmup_epochs * steps)))
    scaler = torch.amp.GradScaler('cuda') if amp == torch.float16 else None
    log(f"{arch}: {len(train_loader.indices)} training, {len(loaders['val'].indices)} val and "
        f"{len(loaders['test'].indices)} test images of {len(data.classes)} classes at {data.image_size} px; "
        f"{_count(settings.epochs, 'epoch')} of {_count(steps, 'step')} on {device_name(device)} in "
        f"{precision_text(settings.amp, amp, device)} "
        f"-> {settings.out}", flush=True)
    start_epoch, best_val_acc, history = 0, -1.0, []
    if settings.resume and os.path.exists(run.last):
        start_epoch, best_val_acc, history = run.restore(model, optimizer, scheduler, scaler, device)
        log(f'resumed {run.last} at epoch {start_epoch}/{settings.epochs}')
    elif settings.resume:
        log(f'no {run.last} to resume from; starting afresh')

    train_model = model
    if world > 1:
        if device.type == 'cuda':  # BN statistics over the global batch, as in a single-process run
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if settings.compile:
        train_model = torch.compile(train_model)
    step = make_step(train_model)
    for epoch in range(start_epoch, settings.epochs):
        started = time.time()
        train_loader.set_epoch(epoch)
        if on_epoch_start:
            on_epoch_start(train_loader)
        train_started = time.time()
        try:
            train_loss, train_acc = train_one_epoch(train_model, train_loader, optimizer, scheduler, step, amp=amp,
                                                    scaler=scaler, desc=f'{arch} epoch {epoch + 1}/{settings.epochs}')
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f'{err}; {_kept(run)}') from None
        train_seconds = time.time() - train_started  # train_one_epoch ends by reading its sums: the device is done
        val_loss, val_acc = evaluate_fn(model, loaders['val'], amp)
        if not math.isfinite(val_loss):  # an epoch's last steps can leave the weights diverged, their loss finite
            raise NonFiniteLoss(f'the val loss became non-finite (nan or inf) after epoch {epoch + 1} ({arch}): the '
                                f'weights diverged; lower --lr or use --amp off; {_kept(run)}')
        history.append({'epoch': epoch + 1, 'train_loss': round(train_loss, 5), 'train_acc': round(train_acc, 5),
                        'val_loss': round(val_loss, 5), 'val_acc': round(val_acc, 5),
                        'lr': round(optimizer.param_groups[0]['lr'], 6), 'seconds': round(time.time() - started, 2),
                        'train_img_per_s': round(len(train_loader) * settings.batch_size / train_seconds)})
        if rank == 0:
            run.save_epoch(model, optimizer, scheduler, scaler, epoch + 1, val_acc, best_val_acc, history)
        best_val_acc = max(val_acc, best_val_acc)
        log(_epoch_line(arch, settings.epochs, history[-1]), flush=True)
    return _test_best(run, model, loaders, evaluate_fn, calibrate, amp, device, world, log,
                      {'epochs': settings.epochs, 'precision': precision, 'best_val_acc': best_val_acc,
                       'train_images': len(train_loader.indices)})


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _epoch_line(arch: str, epochs: int, row: dict) -> str:
    shown_acc = '' if math.isnan(row['train_acc']) else f" acc {row['train_acc']:.2%}"  # the selector has none
    return (f"{arch} epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}{shown_acc}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  lr {row['lr']:.4g}  {row['seconds']:.1f}s")


def _kept(run: Run) -> str:
    return f"'{run.last}' is left as it was" if os.path.exists(run.last) else 'nothing was written'


def _test_best(run: Run, model, loaders, evaluate_fn, calibrate, amp, device, world, log, facts: dict) -> dict:
    """The test set is touched once, with the weights chosen on val (and settings calibrated on val)."""
    barrier(world)
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    best = load_checkpoint(run.best, map_location=device)
    model.load_state_dict(best['model'])
    tuned = calibrate(model) if calibrate else {}
    if rank0 and any(best.get(key) != value for key, value in tuned.items()):
        save_checkpoint({**best, **tuned}, run.best)
    test_loss, test_acc = evaluate_fn(model, loaders['test'], amp)
    example = next(iter(loaders['val']))[0][:1]
    summary = {'arch': best['arch'], 'test_acc': test_acc, 'test_loss': test_loss, **facts,
               'params': count_params(model), 'macs': count_macs(model, example), **tuned}
    if rank0:
        write_json(os.path.join(run.out, 'summary.json'), summary)
    log(f"{best['arch']}: best val acc {facts['best_val_acc']:.2%}, test acc {test_acc:.2%} -> "
        f"{run.out}/summary.json", flush=True)
    barrier(world)
    return summary
