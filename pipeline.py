"""Run everything: teacher -> two students (+ no-KD baselines) -> selector -> evaluate -> infer.

    python pipeline.py --preset quick --data-dir ../shared/data/cifar10-jpeg.tar.gz   # minutes on a CPU
    python pipeline.py --preset medium --data-dir ../shared/data/cifar10-jpeg.tar.gz  # 1 h 41 min on 2 CPU cores
    python pipeline.py --preset full                                                # the real recipe, for a GPU
    python pipeline.py --preset full --seeds 0 1 2                                  # mean ± std over three seeds
A stage whose run directory already holds a finished run with the same settings is skipped; an
interrupted one resumes; a changed one is retrained. --force retrains everything.
"""
import argparse
import json
import os

import evaluate
import infer
import selectorTrain
import studentTrain
import teacherTrain
from distill import UserError
from distill.cli import main_guard

# quick: minutes on a CPU, to see every table and figure on real data. Not a recipe for accuracy.
# medium: 1 h 41 min on a 2-core CPU (README "Results so far"); every model gets far enough
# past chance for KD and routing to have something to show, and is tested on all test images.
# full: the usual CIFAR recipe (SGD 0.1, Nesterov, wd 5e-4, cosine, batch 128, 200 epochs), as in
# kuangliu/pytorch-cifar and the RepDistiller baselines, so that numbers compare with published ones.
PRESETS = {
    'quick': {'common': ['--subset', '1200', '--test-subset', '1000', '--batch-size', '64', '--lr', '0.05'],
              'epochs': 3, 'selector_epochs': 10},
    'medium': {'common': ['--subset', '5000', '--batch-size', '64', '--lr', '0.05'],
               'epochs': 10, 'selector_epochs': 15},
    'full': {'common': [], 'epochs': 200, 'selector_epochs': 30},
}
IGNORED = {'out', 'resume', 'overwrite'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', choices=PRESETS, default='quick')
    p.add_argument('--dataset', default=None, help='default: folder when --data-dir is a .tar.gz, else cifar10')
    p.add_argument('--data-dir', default='data')
    p.add_argument('--root', default='checkpoints', help='where the run directories go')
    p.add_argument('--baselines', action=argparse.BooleanOptionalAction, default=True,
                   help='also train each student without a teacher (--alpha 0)')
    p.add_argument('--seeds', type=int, nargs='+',
                   help='run every stage once per seed, in ROOT/seed<k>/, and report mean ± std over them')
    p.add_argument('--force', action='store_true', help='retrain every stage')
    p.add_argument('--device', default='auto')
    return p.parse_args(argv)


def run_stage(script, argv: list, force: bool):
    """Run script.main(argv) unless OUT holds a finished run made with the same settings."""
    args = script.parse_args(argv)
    summary, config_path = os.path.join(args.out, 'summary.json'), os.path.join(args.out, 'config.json')
    if os.path.exists(config_path) and not force:
        with open(config_path) as f:
            same = {k: v for k, v in json.load(f).items() if k not in IGNORED} == \
                   {k: v for k, v in vars(args).items() if k not in IGNORED}
        if same and os.path.exists(summary):
            print(f'skip {args.out}: finished with these settings')
            return
        argv = argv + (['--resume'] if same else ['--overwrite'])
        print(f"{'resume' if same else 'retrain (settings changed)'} {args.out}")
    elif os.path.exists(os.path.join(args.out, 'last.pt')):
        argv = argv + ['--overwrite']
    script.main(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    dataset = args.dataset or ('folder' if args.data_dir.endswith(('.tar.gz', '.tgz')) else 'cifar10')
    common = ['--dataset', dataset, '--data-dir', args.data_dir, '--device', args.device, *preset['common']]
    seeds = args.seeds or [None]
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds repeats a seed ({', '.join(map(str, seeds))}); give each seed once")
    selectors = [train_system(args, common, preset, seed) for seed in seeds]
    evaluate.main(['--selector', *selectors, '--name', args.preset, '--device', args.device])
    sample = os.path.join('results', 'sample-images')
    export_sample(args, dataset, sample)
    infer.main([sample, '--selector', selectors[0], '--out',
                os.path.join('results', f'{args.preset}-predictions.csv'), '--device', args.device])


def train_system(args, common: list, preset: dict, seed) -> str:
    """teacher -> students (+ baselines) -> selector, in ROOT (or ROOT/seed<k>); returns the selector's best.pt."""
    root = args.root if seed is None else os.path.join(args.root, f'seed{seed}')
    common = common + ([] if seed is None else ['--seed', str(seed)])
    epochs = ['--epochs', str(preset['epochs'])]
    teacher = os.path.join(root, 'teacher', 'best.pt')
    run_stage(teacherTrain, common + epochs + ['--out', os.path.dirname(teacher)], args.force)
    experts = []
    for arch in ('densenet121', 'googlenet'):
        out = os.path.join(root, arch)
        # Both students read one logit cache, so the teacher runs once per epoch, not once per student.
        run_stage(studentTrain, common + epochs + ['--arch', arch, '--teacher', teacher, '--teacher-logits', 'cache',
                                                   '--cache-dir', os.path.join(root, 'logit-cache'), '--out', out],
                  args.force)
        experts.append(os.path.join(out, 'best.pt'))
        if args.baselines:
            run_stage(studentTrain, common + epochs + ['--arch', arch, '--alpha', '0', '--out', f'{out}-nokd'],
                      args.force)
    selector = os.path.join(root, 'selector')
    run_stage(selectorTrain, common + ['--epochs', str(preset['selector_epochs']), '--experts', *experts,
                                       '--out', selector], args.force)
    return os.path.join(selector, 'best.pt')


def export_sample(args, dataset, folder, per_class=2):
    """A few test images as PNG files, to show infer.py on a plain folder."""
    from PIL import Image
    from distill.data import balanced_subset, load_dataset
    test = load_dataset(dataset, args.data_dir, False)
    chosen = balanced_subset(test.labels, per_class * len(test.classes))
    os.makedirs(folder, exist_ok=True)
    for i in chosen.tolist():
        name = f'{test.classes[test.labels[i]]}-{i}.png'
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(os.path.join(folder, name))


if __name__ == '__main__':
    main()
