"""Distil a student (DenseNet121 or GoogLeNet) from a teacher checkpoint with Hinton's KD loss.

    python studentTrain.py --arch densenet121 --teacher checkpoints/teacher/best.pt
    python studentTrain.py --arch googlenet --alpha 0        # the same student without a teacher
"""
import torch

from distill import UserError
from distill.checkpoint import check_compatible, load_checkpoint
from distill.cli import amp_dtype, main_guard, resolve_device, training_parser, validate_args
from distill.data import prepare_data
from distill.engine import fit, inference_model
from distill.losses import distillation_step
from distill.teachers import CachedTeacher, OnlineTeacher
from models import MODELS, build_model


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out=None, epochs=200, lr=0.1)
    parser.add_argument('--arch', default='densenet121', choices=[m for m in MODELS if m != 'selector'])
    parser.add_argument('--teacher', default='checkpoints/teacher/best.pt', help='teacher checkpoint')
    parser.add_argument('--temperature', type=float, default=4.0, help='softens both distributions in the KD term')
    parser.add_argument('--alpha', type=float, default=0.9, help='weight of the KD term; 0 trains without a teacher')
    parser.add_argument('--teacher-logits', choices=('online', 'cache'), default='online',
                        help='run the teacher on every batch, or compute each epoch\'s logits once into --cache-dir')
    parser.add_argument('--cache-dir', default='checkpoints/logit-cache')
    args = validate_args(parser.parse_args(argv))
    if not 0 <= args.alpha <= 1 or args.temperature <= 0:
        raise UserError(f'--alpha must lie in [0, 1] and --temperature must be positive '
                        f'(got {args.alpha} and {args.temperature})')
    # The no-teacher baseline gets its own directory so that it never replaces the distilled student.
    args.out = args.out or f"checkpoints/{args.arch}{'-nokd' if args.alpha == 0 else ''}"
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    data = prepare_data(args)
    teacher_logits, extra = None, {'temperature': args.temperature, 'alpha': args.alpha, 'teacher': None}
    if args.alpha > 0:
        state = load_checkpoint(args.teacher, map_location=device)
        check_compatible(state, args.teacher, num_classes=len(data.classes), split=data.split,
                         image_size=data.image_size)
        teacher = inference_model(state, args.teacher, device)
        amp = amp_dtype(args.amp, device)
        teacher_logits = (OnlineTeacher(teacher, amp) if args.teacher_logits == 'online' else
                          CachedTeacher(teacher, args.teacher, data.split, args.seed, args.cache_dir, amp))
        extra['teacher'] = args.teacher
    elif args.teacher_logits == 'cache':
        raise UserError('--teacher-logits cache needs a teacher; drop it when --alpha is 0')
    torch.manual_seed(args.seed)
    model = build_model(args.arch, len(data.classes))

    def make_step(trained):
        return distillation_step(trained, teacher_logits, args.temperature, args.alpha)
    fit(args, args.arch, model, make_step, data, extra=extra, device=device,
        on_epoch_start=teacher_logits.start_epoch if teacher_logits else None)


if __name__ == '__main__':
    main()
