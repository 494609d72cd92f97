"""The model table: every architecture the scripts can build, by name."""
from torch import nn

from .cifar import densenet121, googlenet, resnet50
from .selector import Selector

# name -> constructor(num_outputs). For the selector, num_outputs is the number of experts.
MODELS = {
    'resnet50': resnet50,
    'densenet121': densenet121,
    'googlenet': googlenet,
    'selector': Selector,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown architecture '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)
