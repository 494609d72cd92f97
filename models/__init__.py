"""The model table: every architecture the scripts can build, by name."""
import torch
from torch import nn

from .cifar import densenet121, googlenet, resnet50
from .selector import Selector

# name -> constructor(num_outputs). For the selector, num_outputs is the number of experts.
# To add a student: write its constructor in cifar.py and add one line here.
MODELS = {
    'resnet50': resnet50,
    'densenet121': densenet121,
    'googlenet': googlenet,
    'selector': Selector,
}
# The students studentTrain.py and pipeline.py distil, cheapest last; any classifier above can be one.
STUDENTS = ('densenet121', 'googlenet')
TEACHER = 'resnet50'


def build_model(name: str, num_classes: int, **model_args) -> nn.Module:
    """model_args: what else the constructor needs (the selector's in_features); checkpoints store them."""
    if name not in MODELS:
        raise ValueError(f"unknown architecture '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **model_args)


def takes_image_size(name: str, size: int) -> bool:
    """Whether the architecture's pooling leaves at least a pixel of a size x size image. Shapes only: on
    the meta device nothing is computed or allocated."""
    with torch.device('meta'):
        model = build_model(name, 2).eval()
        try:
            model(torch.empty(2, 3, size, size))
        except RuntimeError:
            return False
    return True
