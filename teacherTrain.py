"""Train the teacher (ResNet50 by default) on CIFAR-10, CIFAR-100 or an image folder.

    python teacherTrain.py                                  # CIFAR-10, the full recipe (200 epochs)
    python teacherTrain.py --dataset folder --data-dir ../shared/data/cifar10-jpeg.tar.gz --subset 2000 --epochs 3
"""
import torch

from distill.cli import check_image_size, main_guard, train_settings, training_parser, validate_args
from distill.data import prepare_data
from distill.engine import fit
from distill.losses import classification_step
from models import MODELS, TEACHER, build_model


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out='checkpoints/teacher', epochs=200, lr=0.1)
    parser.add_argument('--arch', default=TEACHER, choices=[m for m in MODELS if m != 'selector'],
                        help='the teacher architecture')
    args = validate_args(parser.parse_args(argv))
    check_image_size(args.arch, args.image_size)
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    data = prepare_data(args)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, len(data.classes))
    fit(train_settings(args), args.arch, model,
        lambda trained: classification_step(trained, args.label_smoothing), data)


if __name__ == '__main__':
    main()
