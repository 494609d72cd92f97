"""Train the teacher (ResNet50 by default) on CIFAR-10, CIFAR-100 or an image folder.

    python teacherTrain.py                                  # CIFAR-10, the full recipe (200 epochs)
    python teacherTrain.py --dataset folder --data-dir ../shared/data/cifar10-jpeg.tar.gz --subset 2000 --epochs 3
"""
from distill.cli import (add_model_arguments, classifier_args, initial_model, main_guard, train_settings,
                         training_parser, validate_args)
from distill.data import prepare_data
from distill.engine import fit
from distill.losses import classification_step
from models import MODELS, TEACHER


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out='checkpoints/teacher', epochs=200, lr=0.1)
    add_model_arguments(parser, [m for m in MODELS if m != 'selector'], TEACHER, 'the teacher architecture')
    return validate_args(parser.parse_args(argv))


@main_guard
def main(argv=None):
    args = parse_args(argv)
    model_args = classifier_args(args)
    data = prepare_data(args)
    model = initial_model(args, data, model_args)
    fit(train_settings(args), args.arch, model,
        lambda trained: classification_step(trained, args.label_smoothing), data, extra={'model_args': model_args})


if __name__ == '__main__':
    main()
