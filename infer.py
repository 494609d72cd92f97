"""Classify every image in the folders and files given through the routing and the one student it picks per image.

    python infer.py my_pictures/ --selector checkpoints/selector --out predictions.csv
    python infer.py photo.jpg holiday/*.png --out -          # files and folders, the table on standard output
Routing is the mode selectorTrain.py chose on val (cascade or selector) unless --route says otherwise.
A file that cannot be read is a row with its error; when no file can be read, the exit code is 2.
"""
import os
import sys

import torch
from tqdm import tqdm

from distill import UserError
from distill.cli import Parser, add_device_arguments, check_range, checkpoint_path, main_guard
from distill.loaders import normalise
from distill.predict import build_classifier, default_workers, files_to_classify, named, read_batches, write_rows
from distill.routing.decisions import MODES
from distill.runtime import amp_dtype, autocast, resolve_device

SHOWN_SKIPPED = 5  # lines naming unreadable files; a photo folder with a sidecar file per photo has thousands


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('images', nargs='+', help='folders, searched recursively, and image files')
    p.add_argument('--selector', default='checkpoints/selector/best.pt', help='selector checkpoint or run directory')
    p.add_argument('--route', choices=MODES, help="routing mode (default: the one selectorTrain.py chose on val)")
    p.add_argument('--threshold', type=float, nargs='+', help='cascade (without --route, it picks the cascade): '
                   'top-probability each expert but the last must reach to answer (default: as selectorTrain.py '
                   'chose them)')
    p.add_argument('--cost-weight', type=float, help='selector (without --route, it picks the selector): weight of the '
                   'extra cost (default: as chosen on val)')
    p.add_argument('--cost', choices=('stored', 'measure', 'macs'), default='stored',
                   help="selector: the experts' costs as timed by selectorTrain.py, timed again here (in calls of "
                        "--batch-size), or MACs")
    p.add_argument('--expert', help='skip routing and use this expert alone (its name or arch)')
    p.add_argument('--teacher', help='skip routing and use this checkpoint (e.g. the teacher) alone')
    p.add_argument('--out', default=os.path.join('results', 'predictions.csv'),
                   help="where the table goes; '-' for standard output")
    p.add_argument('--format', choices=('csv', 'json'), help="default: json if --out ends in .json, else csv")
    p.add_argument('--batch-size', type=int, default=256, help='images read and classified at a time')
    p.add_argument('--workers', type=int, help='processes that decode images while the model runs (default: up '
                   'to 8 on a GPU, 0 on a CPU)')
    add_device_arguments(p)
    args = p.parse_args(argv)
    args.format = args.format or ('json' if args.out.lower().endswith('.json') else 'csv')
    check_range('batch_size', args.batch_size, low=1)
    check_range('workers', args.workers, low=0)
    routing_flags = [f for f, v in (('--route', args.route), ('--threshold', args.threshold),
                                    ('--cost-weight', args.cost_weight), ('--cost', args.cost != 'stored' or None))
                     if v is not None]
    alone = '--teacher' if args.teacher else '--expert' if args.expert else None
    if alone and routing_flags:
        raise UserError(f"{alone} runs one model on every image, so {', '.join(routing_flags)} would do nothing; "
                        f"drop one or the other")
    if args.teacher and args.expert:
        raise UserError('--teacher and --expert each pick the one model to run; pass only one')
    for t in args.threshold or []:
        check_range('threshold', t, 0, 1)
    if args.cost_weight is not None:
        check_range('cost_weight', args.cost_weight, low=0)
    args.selector = checkpoint_path(args.selector)
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    files = files_to_classify(args.images, args.out)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    classify, state = build_classifier(args.selector, device, amp, teacher=args.teacher, expert=args.expert,
                                       route=args.route, thresholds=args.threshold, cost_weight=args.cost_weight,
                                       cost=args.cost, batch_size=min(args.batch_size, len(files)))
    classes, size, failures = state['class_names'], state['image_size'], []
    workers = default_workers(device) if args.workers is None else args.workers

    def batches():
        for images, read, failed in read_batches(files, args.batch_size, size, workers, device):
            yield normalise(images.to(device, non_blocking=True), state['mean'], state['std']), (read, failed)

    def rows():
        position = {path: i for i, path in enumerate(files)}  # the table lists the files in the order given
        with torch.inference_mode(), autocast(device, amp), tqdm(total=len(files), unit='img', disable=None,
                                                                   file=sys.stderr) as bar:
            for (read, failed), logits, chosen in classify(batches()):
                failures.extend(failed)
                batch = [{'path': path, 'prediction': '', 'confidence': None, 'expert': '', 'error': why}
                         for path, why in failed]
                if len(read):
                    confidence, label = torch.softmax(logits.float(), 1).max(1)
                    batch += [{'path': path, 'prediction': classes[c], 'confidence': round(p, 4), 'expert': e,
                               'error': ''} for path, c, p, e in zip(read, label.tolist(), confidence.tolist(), chosen)]
                yield from sorted(batch, key=lambda row: position[row['path']])
                bar.update(len(batch))
    write_rows(args.out, args.format, rows())
    for path, why in failures[:SHOWN_SKIPPED]:
        print(f'skipped {path}: {why}', file=sys.stderr)
    if len(failures) > SHOWN_SKIPPED:
        print(f'skipped {len(failures) - SHOWN_SKIPPED} more unreadable files; the table lists each, with why',
              file=sys.stderr)
    done = len(files) - len(failures)
    print(f"{done} image{'s' * (done != 1)} classified, {len(failures)} unreadable"
          + ('' if args.out == '-' else f' -> {args.out}'), file=sys.stderr if args.out == '-' else sys.stdout)
    if not done:  # a script that calls infer.py learns from the exit code that nothing was classified
        raise UserError(f"no file in {named(args.images)} could be read as an image; pass a folder of images")


if __name__ == '__main__':
    main()
