"""Figures for the README, drawn with matplotlib from real runs (evaluate.py calls these)."""
import csv
import itertools
import math
import os

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402
from .metrics import confusion_matrix, share_per_class  # noqa: E402
from .routing.decisions import RANKING_REFERENCES  # noqa: E402


MANY_CLASSES = 30


def _save(fig, path: str, tight: bool = True) -> str:
    if tight:
        fig.tight_layout()
    with atomic_write(path, 'wb') as f:  # a README figure is never left half-drawn
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or 'png', dpi=120)
    plt.close(fig)
    return path


def training_curves(runs: dict, path: str) -> str:
    """runs: name -> metrics.csv path. Loss and val accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, metrics_csv in runs.items():
        with open(metrics_csv) as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r['epoch']) for r in rows]
        line, = ax_loss.plot(epochs, [float(r['train_loss']) for r in rows], 'o-', ms=3, label=name)
        ax_loss.plot(epochs, [float(r['val_loss']) for r in rows], 'o--', ms=3, color=line.get_color())
        ax_acc.plot(epochs, [100 * float(r['val_acc']) for r in rows], 'o-', ms=3, label=name, color=line.get_color())
    ax_loss.set(xlabel='epoch', ylabel='loss (solid train, dashed val)', title='loss')
    ax_acc.set(xlabel='epoch', ylabel='val accuracy (%)', title='validation accuracy')
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def selector_curve(metrics_csv: str, references: dict, path: str) -> str:
    """The selector's loss and val score (its ranking: routed accuracy averaged over its cost range) per epoch,
    against the rankings it is judged by (ranking_references), drawn as lines across."""
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r['epoch']) for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r['train_loss']) for r in rows], 'o-', ms=3, label='train (route images and copies)')
    ax_loss.plot(epochs, [float(r['val_loss']) for r in rows], 'o--', ms=3, label='val')
    ax_score.plot(epochs, [100 * float(r['val_acc']) for r in rows], 'o-', ms=3, label='selector')
    for (name, value), style in zip(references.items(), itertools.cycle([':', '--', '-.'])):
        ax_score.axhline(100 * value, ls=style, color='gray', label=RANKING_REFERENCES.get(name, name))
    ax_loss.set(xlabel='epoch', ylabel='binary cross-entropy', title='which expert is right: loss')
    ax_score.set(xlabel='epoch', ylabel='val accuracy over the cost range (%)', title='how well it ranks val images')
    for ax in (ax_loss, ax_score):
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def confusion_matrices(matrices: dict, classes: list, path: str) -> str:
    """matrices: name -> C x C counts (rows true, columns predicted), shown row-normalised."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 5), squeeze=False, layout='constrained')
    for ax, (name, counts) in zip(axes[0], matrices.items()):
        m = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)
        image = ax.imshow(m.numpy(), cmap='Blues', vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        small = len(classes) <= 20
        ticks = list(range(len(classes))) if small else []
        ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=7)
        ax.set_xlabel('predicted')
        if small:  # counts in the cells, readable on either shade
            for (i, j), n in zip(itertools.product(range(len(classes)), repeat=2), counts.flatten().tolist()):
                if n:
                    ax.text(j, i, str(n), ha='center', va='center', fontsize=6,
                            color='white' if m[i, j] > 0.5 else 'black')
    axes[0][0].set_ylabel('true')
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label='fraction of the true class')
    return _save(fig, path, tight=False)


def per_class_bars(values: dict, classes: list, path: str, ylabel: str, stacked: bool = False) -> str:
    """values: series name -> one number per class. Grouped bars, or stacked (routing shares). Past
    MANY_CLASSES (CIFAR-100) grouped bars are too thin to tell apart: each series is a row of dots."""
    many = len(classes) > MANY_CLASSES
    fig, ax = plt.subplots(figsize=(min(max(8, 0.6 * len(classes)), 20), 4))
    width = 0.8 / (1 if stacked else len(values))
    bottom = [0.0] * len(classes)
    for i, (name, per_class) in enumerate(values.items()):
        heights = [math.nan if v is None else 100 * v for v in per_class]  # nothing drawn for a class with no images
        if many and not stacked:
            ax.plot(range(len(classes)), heights, 'o', markersize=3, alpha=0.7, label=name)
            continue
        x = [c + (0 if stacked else (i - (len(values) - 1) / 2) * width) for c in range(len(classes))]
        ax.bar(x, heights, width, label=name, bottom=[100 * b for b in bottom] if stacked else 0)
        if stacked:
            bottom = [b + (v or 0) for b, v in zip(bottom, per_class)]
    empty = [all(per_class[c] is None for per_class in values.values()) for c in range(len(classes))]
    labels = [f'{name}\n(no images)' if none else name for name, none in zip(classes, empty)]  # not a 0% bar
    ax.set_xticks(range(len(classes)), labels, rotation=90 if many else 45 if len(classes) > 8 else 0,
                  fontsize=5 if many else 8)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, **({'loc': 'upper left', 'bbox_to_anchor': (1, 1)} if many else {}))
    return _save(fig, path)


def accuracy_vs_time(curves: dict, points: dict, path: str) -> str:
    """curves: mode -> [(setting, accuracy, seconds per image)] (the val-tuned sweeps, on test, each setting's
    time the mix of the experts' measured times); points: name -> (seconds per image, accuracy) of each model
    and routing, as measured. Every line and point is named."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, sweep in curves.items():
        if not isinstance(sweep[0][0], list) or len(sweep[0][0]) == 1:  # one setting: a curve
            front = sorted((c, a) for _, a, c in sweep)
            ax.plot([1000 * c for c, _ in front], [100 * a for _, a in front], '.-' if len(front) <= 40 else '-',
                    alpha=0.6, label=f'{mode}, every setting (time from the mix)')
        else:  # a many-stage cascade: its settings as a cloud
            ax.scatter([1000 * c for _, _, c in sweep], [100 * a for _, a, _ in sweep], s=4, alpha=0.3,
                       label=f'{mode}, every setting (time from the mix)')
    markers = itertools.cycle('sD^vP*Xh')
    for name, (seconds, acc) in points.items():
        ax.scatter([1000 * seconds], [100 * acc], marker=next(markers), s=50, zorder=3, label=name)
    ax.set(xlabel='ms per image (measured on this device)', ylabel='test accuracy (%)',
           title='accuracy versus measured time')
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def report_figures(folder: str, runs: dict, predictions: dict, per_class: dict, labels, classes: list, experts: list,
                   choice, sweeps: dict, rows: dict, selector_run: tuple | None = None) -> list:
    """evaluate.py's figures. runs: model -> metrics.csv; predictions: name -> predicted class per test image
    (the first entry, the experts and 'routed' get confusion matrices); per_class: name -> accuracy per class;
    choice: the expert each image was routed to; rows: evaluate's accuracy and time per model and routing;
    selector_run: (its metrics.csv, its ranking_references) where it has one."""
    n = len(classes)
    shown = [*predictions][:1] + [e for e in experts if e != [*predictions][0]] + ['routed']
    shares = dict(zip(experts, share_per_class(choice, labels, len(experts), n)))
    points = {name: (row['time'], row['accuracy']) for name, row in rows.items()
              if name not in ('oracle', 'random', 'routed') and row.get('time') == row.get('time')}
    runs = {k: v for k, v in runs.items() if os.path.exists(v)}  # experts brought back as weights alone have none
    return ([training_curves(runs, os.path.join(folder, 'training_curves.png'))] if runs else []) + [
        confusion_matrices({name: confusion_matrix(predictions[name], labels, n) for name in shown}, classes,
                           os.path.join(folder, 'confusion.png')),
        per_class_bars(per_class, classes, os.path.join(folder, 'per_class_accuracy.png'), 'test accuracy (%)'),
        per_class_bars(shares, classes, os.path.join(folder, 'routing_share.png'), 'images routed (%)', stacked=True),
        accuracy_vs_time(sweeps, points, os.path.join(folder, 'accuracy_vs_time.png')),
    ] + ([selector_curve(*selector_run, os.path.join(folder, 'selector_curve.png'))]
         if selector_run and os.path.exists(selector_run[0]) else [])


def model_figures(folder: str, runs: dict, matrices: dict, per_class: dict, classes: list) -> list:
    """evaluate.py --models' figures: training curves where the runs kept theirs, each model's confusion matrix
    (matrices: name -> counts) and its accuracy per class."""
    runs = {k: v for k, v in runs.items() if os.path.exists(v)}
    return ([training_curves(runs, os.path.join(folder, 'training_curves.png'))] if runs else []) + [
        confusion_matrices(matrices, classes, os.path.join(folder, 'confusion.png')),
        per_class_bars(per_class, classes, os.path.join(folder, 'per_class_accuracy.png'), 'test accuracy (%)')]
