"""Figures for the README, drawn with matplotlib from real runs (evaluate.py calls these)."""
import csv
import os

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import confusion_matrix, share_per_class  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves(runs: dict, path: str) -> str:
    """runs: name -> metrics.csv path. Loss and val accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, metrics_csv in runs.items():
        with open(metrics_csv) as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r['epoch']) for r in rows]
        line, = ax_loss.plot(epochs, [float(r['train_loss']) for r in rows], label=f'{name} train')
        ax_loss.plot(epochs, [float(r['val_loss']) for r in rows], '--', color=line.get_color())
        ax_acc.plot(epochs, [100 * float(r['val_acc']) for r in rows], label=name, color=line.get_color())
    ax_loss.set(xlabel='epoch', ylabel='loss (solid train, dashed val)', title='loss')
    ax_acc.set(xlabel='epoch', ylabel='val accuracy (%)', title='validation accuracy')
    ax_acc.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrices(matrices: dict, classes: list, path: str) -> str:
    """matrices: name -> C x C counts (rows true, columns predicted), shown row-normalised."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4 * len(matrices), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        m = m.float() / m.sum(1, keepdim=True).clamp(min=1)
        ax.imshow(m.numpy(), cmap='Blues', vmin=0, vmax=1)
        ax.set_title(name)
        ticks = range(len(classes)) if len(classes) <= 20 else []
        ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
        ax.set_xlabel('predicted')
    axes[0][0].set_ylabel('true')
    return _save(fig, path)


def per_class_bars(values: dict, classes: list, path: str, ylabel: str, stacked: bool = False) -> str:
    """values: series name -> one number per class. Grouped bars, or stacked (routing shares)."""
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(classes)), 4))
    width = 0.8 / (1 if stacked else len(values))
    bottom = [0.0] * len(classes)
    for i, (name, per_class) in enumerate(values.items()):
        x = [c + (0 if stacked else (i - (len(values) - 1) / 2) * width) for c in range(len(classes))]
        ax.bar(x, [100 * v for v in per_class], width, label=name, bottom=[100 * b for b in bottom] if stacked else 0)
        if stacked:
            bottom = [b + v for b, v in zip(bottom, per_class)]
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 8 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_macs(curve: list, points: dict, path: str) -> str:
    """curve: [(MACs, accuracy)] of routing over the cost-weight sweep; points: name -> (MACs, accuracy)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([m / 1e6 for m, _ in curve], [100 * a for _, a in curve], 'o-', label='routed (cost-weight sweep)')
    for name, (macs, acc) in points.items():
        ax.scatter([macs / 1e6], [100 * acc], marker='s', zorder=3)
        ax.annotate(name, (macs / 1e6, 100 * acc), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set(xlabel='MMACs per image', ylabel='test accuracy (%)', title='accuracy versus compute')
    ax.legend(fontsize=8)
    return _save(fig, path)


def report_figures(folder: str, runs: dict, predictions: dict, per_class: dict, labels, classes: list, experts: list,
                   choice, sweep: list, points: dict) -> list:
    """evaluate.py's five figures. predictions: name -> predicted class per test image (the first entry,
    the experts and 'routed' get confusion matrices); per_class: name -> accuracy per class; choice:
    the expert each image was routed to."""
    n = len(classes)
    shown = [*predictions][:1] + [e for e in experts if e != [*predictions][0]] + ['routed']
    shares = dict(zip(experts, share_per_class(choice, labels, len(experts), n)))
    return [
        training_curves({k: v for k, v in runs.items() if os.path.exists(v)}, os.path.join(folder, 'training_curves.png')),
        confusion_matrices({name: confusion_matrix(predictions[name], labels, n) for name in shown}, classes,
                           os.path.join(folder, 'confusion.png')),
        per_class_bars(per_class, classes, os.path.join(folder, 'per_class_accuracy.png'), 'test accuracy (%)'),
        per_class_bars(shares, classes, os.path.join(folder, 'routing_share.png'), 'images routed (%)', stacked=True),
        accuracy_vs_macs([(m, a) for _, a, m in sweep], points, os.path.join(folder, 'accuracy_vs_macs.png')),
    ]
