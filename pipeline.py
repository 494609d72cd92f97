"""Run everything: teacher -> students (+ no-KD twins) -> selector -> evaluate -> infer.

    python pipeline.py --preset quick --data-dir ../shared/data/cifar10-jpeg.tar.gz   # minutes on a CPU
    python pipeline.py --preset fast --data-dir ../shared/data/cifar10-jpeg.tar.gz    # one H100: 9 minutes
    python pipeline.py --preset full                                                # the classic 200-epoch recipe
    python pipeline.py --preset full --seeds 0 1 2                                  # mean ± std over three seeds
    python pipeline.py --preset quick --data-dir my_photos/ --image-size 128 --init imagenet   # your own pictures
A stage whose run directory already holds a finished run with the same settings is skipped; an
interrupted one resumes; a changed one is retrained. --force retrains everything.
"""
import argparse
import os
import sys

import evaluate
import infer
import selectorTrain
import studentTrain
import teacherTrain
from distill.checkpoint import run_dir
from distill.cli import MAX_SEED, Parser, check_distinct, check_positive, check_range, main_guard
from distill.data import default_dataset, export_sample_images
from distill.pretrained import IMAGENET, RANDOM
from distill.runtime import resolve_device
from distill.stages import PRESETS, run_stages
from models import STEM_STRIDES, STUDENTS


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', choices=PRESETS, default='quick',
                   help='how long to train: smoke (minutes, checks that every step runs), quick (minutes on a CPU), '
                        'medium (about two hours on a 2-core CPU), fast (about 9 minutes on one H100), full (the '
                        'classic 200-epoch recipe)')
    p.add_argument('--dataset', help='cifar10, cifar100 or folder (default: folder when --data-dir is an archive, or '
                                     'it or a folder in it holds train/ and test/; else cifar10)')
    p.add_argument('--data-dir', default='data', help='download folder for CIFAR, or an image folder, .tar.gz or .zip')
    p.add_argument('--image-size', type=int, help="every image resized to SxS, for every stage (default: the preset's, "
                                                  "16 for smoke, else the data set's own: 32 for CIFAR and folders)")
    p.add_argument('--root', default='checkpoints', help='where the run directories go')
    p.add_argument('--results', default='results', help='where the reports, figures and predictions go')
    p.add_argument('--students', nargs='+', choices=STUDENTS, default=list(STUDENTS),
                   help='the students to distil; one student is routed with the teacher as its fallback')
    p.add_argument('--baselines', action=argparse.BooleanOptionalAction, default=True,
                   help='also train each student without a teacher (--alpha 0)')
    p.add_argument('--init', choices=(RANDOM, IMAGENET), default=RANDOM,
                   help="the teacher's and the students' starting weights: torchvision's ImageNet-trained ones fit "
                        "all but the classifier and, below 128 px, the stem")
    p.add_argument('--stem-stride', type=int, choices=STEM_STRIDES,
                   help="how much the teacher's and the students' stems shrink an image: 1 keeps every pixel "
                        "(default: by image size, 1 below 64 px, 2 below 128 px, else 4)")
    p.add_argument('--lr', type=float, help="the teacher's and the students' peak learning rate (default: the "
                                            "preset's: 0.4 for fast, 0.1 for full, else 0.05); from --init imagenet, "
                                            "fine-tuning usually takes a smaller one")
    p.add_argument('--seeds', type=int, nargs='+',
                   help='run every stage once per seed, in ROOT/seed<k>/, and report mean ± std over them')
    p.add_argument('--force', action='store_true', help='retrain every stage')
    p.add_argument('--jobs', type=int, help="students trained at once, each in its own process (default: the "
                                            "preset's: 4 for fast, 2 for smoke, else 1)")
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    return p.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)  # a bad --device is one line now, not after the first stage
    if device.type == 'cpu' and args.preset in ('fast', 'full'):
        print(f'note: --preset {args.preset} is sized for a GPU; on a CPU, CIFAR-10 takes it many hours (quick and '
              f'medium fit a CPU)', file=sys.stderr)
    check_range('jobs', args.jobs, low=1)
    check_range('image_size', args.image_size, low=1)
    check_positive('lr', args.lr)
    check_distinct('students', args.students)
    check_distinct('seeds', args.seeds or [])
    for seed in args.seeds or []:
        check_range('seeds', seed, 0, MAX_SEED)
    preset = PRESETS[args.preset]
    dataset = args.dataset or default_dataset(args.data_dir)
    size = ['--image-size', str(args.image_size)] if args.image_size else []  # after the preset's: the last one wins
    common = ['--dataset', dataset, '--data-dir', args.data_dir, '--device', args.device, *preset['data'], *size]
    selectors = [train_system(args, common, preset, seed) for seed in args.seeds or [None]]
    evaluate.main(['--selector', *selectors, '--name', args.preset, '--device', args.device,
                   '--results-dir', args.results])
    sample = os.path.join(args.results, 'sample-images')
    export_sample_images(dataset, args.data_dir, sample, args.image_size)
    infer.main([sample, '--selector', selectors[0], '--device', args.device,
                '--out', os.path.join(args.results, f'{args.preset}-predictions.csv')])


def train_system(args, common: list, preset: dict, seed) -> str:
    """teacher -> students (+ twins) -> selector, in ROOT (or ROOT/seed<k>); returns the selector's best.pt."""
    root = args.root if seed is None else os.path.join(args.root, f'seed{seed}')
    common = common + ([] if seed is None else ['--seed', str(seed)])
    model = ['--init', args.init] + (['--stem-stride', str(args.stem_stride)] if args.stem_stride else [])
    train = preset['train'] + (['--lr', str(args.lr)] if args.lr is not None else [])  # the last --lr wins
    student = train + ['--epochs', str(preset['epochs'])] + model
    teacher = os.path.join(root, 'teacher', 'best.pt')
    run_stages([(teacherTrain, common + model + train + preset.get('teacher', []) +
                 ['--epochs', str(preset['teacher_epochs']), '--out', os.path.dirname(teacher)])], args.force)
    experts, students = [], []
    for arch in args.students:
        out = run_dir(root, arch)
        # Every student reads one logit cache, so the teacher runs once per epoch, not once per student.
        students.append((studentTrain, common + student + ['--arch', arch, '--teacher', teacher, '--teacher-logits',
                                                           'cache', '--cache-dir', os.path.join(root, 'logit-cache'),
                                                           '--out', out]))
        experts.append(os.path.join(out, 'best.pt'))
        if args.baselines:
            students.append((studentTrain, common + student + ['--arch', arch, '--alpha', '0', '--teacher', teacher,
                                                               '--out', run_dir(root, arch, distilled=False)]))
    run_stages(students, args.force, args.jobs or preset.get('jobs', 1), os.path.join(root, 'logs'))
    selector = os.path.join(root, 'selector')
    fallback = ['--include-teacher'] if len(experts) == 1 else []  # routing needs two experts
    run_stages([(selectorTrain, common + ['--epochs', str(preset['selector_epochs']), '--experts', *experts,
                                          *fallback, '--out', selector])], args.force)
    return os.path.join(selector, 'best.pt')


if __name__ == '__main__':
    main()
