"""Distil a student (DenseNet121 or GoogLeNet) from a teacher checkpoint with Hinton's KD loss.

    python studentTrain.py --arch densenet121 --teacher checkpoints/teacher
    python studentTrain.py --arch googlenet --alpha 0        # the same student without a teacher
A student takes its data settings (dataset, split, image size) from its teacher unless they are given;
so does the twin trained with --alpha 0 when --teacher is given, so that the two are compared on one split.
"""
import os

from distill import UserError
from distill.checkpoint import check_classifier, check_compatible, load_checkpoint, run_dir
from distill.cli import (add_model_arguments, check_positive, check_range, check_run_dir, check_spared,
                         check_writable, checkpoint_path, classifier_args, given_flags, inherit_data_settings,
                         initial_model, main_guard, train_settings, training_parser, validate_args)
from distill.data import prepare_data
from distill.engine import fit
from distill.losses import distillation_step
from distill.runtime import amp_dtype, inference_model, resolve_device
from distill.teachers import CachedTeacher, OnlineTeacher
from models import STUDENTS


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out=None, epochs=200, lr=0.1, inherits='the teacher',
                             out_help='run directory (default: checkpoints/<arch>, or checkpoints/<arch>-nokd '
                                      'with --alpha 0)')
    add_model_arguments(parser, STUDENTS, 'densenet121', 'the student to train')
    parser.add_argument('--teacher', default='checkpoints/teacher/best.pt',
                        help='teacher checkpoint or run directory (with --alpha 0, if given, only its data settings)')
    parser.add_argument('--temperature', type=float, default=4.0, help='softens both distributions in the KD term')
    parser.add_argument('--alpha', type=float, default=0.9, help='weight of the KD term; 0 trains without a teacher')
    parser.add_argument('--teacher-logits', choices=('online', 'cache'), default='online',
                        help="run the teacher on every batch, or compute each epoch's logits once into --cache-dir")
    parser.add_argument('--cache-dir', default='checkpoints/logit-cache',
                        help='where --teacher-logits cache keeps them')
    args = validate_args(parser.parse_args(argv))
    check_range('alpha', args.alpha, 0, 1)
    check_positive('temperature', args.temperature)
    if args.alpha == 0 and args.teacher_logits == 'cache':
        raise UserError('--teacher-logits cache needs a teacher; drop it when --alpha is 0')
    if args.teacher_logits == 'cache':  # before the teacher's first pass, not after
        check_writable(os.path.join(args.cache_dir, 'epoch0.pt'))
    args.teacher = checkpoint_path(args.teacher)
    # The no-teacher baseline gets its own directory so that it never replaces the distilled student.
    args.out = args.out or run_dir('checkpoints', args.arch, distilled=args.alpha > 0)
    check_run_dir(args)
    if args.alpha > 0:
        check_spared(args.out, [args.teacher])
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    reads_teacher = args.alpha > 0 or 'teacher' in given_flags(argv)
    teacher_state = load_checkpoint(args.teacher, map_location=device) if reads_teacher else None
    if teacher_state:
        check_classifier(teacher_state, args.teacher)
        inherit_data_settings(args, argv, teacher_state['config'], args.teacher)
    else:
        inherit_data_settings(args, argv, {}, '')
    model_args = classifier_args(args, args.teacher if teacher_state else '')
    data = prepare_data(args)
    teacher_logits = None
    extra = {'temperature': args.temperature, 'alpha': args.alpha, 'teacher': None, 'model_args': model_args}
    if args.alpha > 0:
        check_compatible(teacher_state, args.teacher, num_classes=len(data.classes), split=data.split,
                         image_size=data.image_size)
        teacher = inference_model(teacher_state, args.teacher, device)
        amp = amp_dtype(args.amp, device)
        teacher_logits = (OnlineTeacher(teacher, amp) if args.teacher_logits == 'online' else
                          CachedTeacher(teacher, args.teacher, data.split, data.train.images, args.seed,
                                        args.cache_dir, amp))
        extra['teacher'] = args.teacher
    model = initial_model(args, data, model_args)

    def make_step(trained):
        return distillation_step(trained, teacher_logits, args.temperature, args.alpha, args.label_smoothing)
    fit(train_settings(args), args.arch, model, make_step, data, extra=extra, device=device,
        on_epoch_start=teacher_logits.start_epoch if teacher_logits else None)


if __name__ == '__main__':
    main()
