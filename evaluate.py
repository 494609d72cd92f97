"""Test-set report of a trained system: accuracy, both routing modes, measured speed, compression, figures.

    python evaluate.py --selector checkpoints/selector
    python evaluate.py --selector checkpoints/seed*/selector   # mean ± std over seeds
    python evaluate.py --models checkpoints/teacher checkpoints/googlenet --data-dir my_test_set/   # no routing
Everything is rebuilt from the checkpoints: the selector names its experts, the students their teacher.
Every model and both routing modes are timed here, in turns, on this device.
"""
import os

from distill import UserError
from distill.cli import (Parser, add_device_arguments, check_distinct, check_range, check_writable, checkpoint_path,
                         main_guard)
from distill.evaluation import evaluate_models, evaluate_system
from distill.report import aggregate, aggregate_markdown, seeds_of, write_report
from distill.routing.decisions import MODES
from distill.routing.experts import load_selector
from distill.runtime import amp_dtype, resolve_device


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    scored = p.add_mutually_exclusive_group()
    scored.add_argument('--selector', nargs='+', help='selector checkpoint(s) or run directories; several (runs that '
                        'differ only by --seed) are each evaluated, then every accuracy is reported as mean ± std '
                        'over them (default: checkpoints/selector/best.pt)')
    scored.add_argument('--models', nargs='+', help='instead of a routed system, these classifiers alone (teacher, '
                        'students, any run of this repository; checkpoints or run directories), each against the '
                        'first')
    p.add_argument('--teacher', help="the teacher to compare with (default: the one the experts name)")
    p.add_argument('--data-dir', help="the test images: the experts' data moved, or any folder or archive of "
                                      "test/<class>/ images of their classes, a new test set (train/ not needed), "
                                      "or a folder of <class>/ folders alone (default: as stored in the checkpoints)")
    p.add_argument('--test-subset', type=int, help='the first N test images, class-balanced (default: as the '
                                                   'selector was tested; all of a --data-dir)')
    p.add_argument('--route', choices=MODES, help='the routing mode of the routed row, the figures and the per-class '
                                                  'accuracy (default: the one selectorTrain.py chose on val); both '
                                                  'modes are always scored and timed')
    p.add_argument('--batch-size', type=int, default=256, help='batch for scoring and for timing')
    p.add_argument('--timing-images', type=int, default=2048,
                   help='every model and routing mode is timed on N test images, every class in turn, in calls of '
                        'the batch; each routing mode also as infer.py routes a folder, the later experts on images '
                        'gathered across calls')
    add_device_arguments(p)
    p.add_argument('--name', help='the report is written as RESULTS_DIR/<name>.json and .md (default: report, or '
                                  'models with --models)')
    p.add_argument('--results-dir', default='results', help='where the report goes')
    p.add_argument('--images-dir', help='the figures go in IMAGES_DIR/<name>/ (default IMAGES_DIR: RESULTS_DIR)')
    args = p.parse_args(argv)
    for flag, given in (('--teacher', args.teacher), ('--route', args.route)):
        if args.models and given:
            raise UserError(f"{flag} belongs to a routed system's report; --models scores each model alone (list "
                            f"a teacher among them)")
    args.name = args.name or ('models' if args.models else 'report')
    for name in ('test_subset', 'batch_size', 'timing_images'):
        check_range(name, getattr(args, name), low=1)
    if os.path.basename(args.name) != args.name or args.name in ('', '.', '..'):
        raise UserError(f"--name '{args.name}' names the report's files, not a folder; put the folder in --results-dir")
    if args.models:
        args.models = [checkpoint_path(m) for m in args.models]
    else:
        args.selector = [checkpoint_path(s) for s in args.selector or ['checkpoints/selector/best.pt']]
        check_distinct('selector', [os.path.realpath(s) for s in args.selector])  # one run, given twice
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    check_writable(os.path.join(args.results_dir, f'{args.name}.json'))  # before minutes of evaluation, not after
    check_writable(os.path.join(args.images_dir or args.results_dir, args.name, 'confusion.png'))
    options = dict(data_dir=args.data_dir, test_subset=args.test_subset, batch_size=args.batch_size,
                   timing_images=args.timing_images, results_dir=args.results_dir, images_dir=args.images_dir)
    if args.models:
        return evaluate_models(args.models, args.name, device, amp, **options)
    options.update(route=args.route, teacher=args.teacher)
    if len(args.selector) == 1:
        return evaluate_system(args.selector[0], args.name, device, amp, **options)
    seeds = seeds_of([load_selector(path)['config'] for path in args.selector])
    results = [evaluate_system(path, f'{args.name}-seed{seed}', device, amp, **options)
               for seed, path in zip(seeds, args.selector)]
    summary = aggregate(args.name, results)
    write_report(args.results_dir, args.name, summary, aggregate_markdown(summary))
    return summary


if __name__ == '__main__':
    main()
