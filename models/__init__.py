"""The model table: every architecture the scripts can build, by name."""
import bisect
import inspect

import torch
from torch import nn

from .cifar import STEM_STRIDES, densenet121, googlenet, resnet50, stem_stride_for
from .selector import Selector

__all__ = ['MODELS', 'STEM_STRIDES', 'STUDENTS', 'TEACHER', 'build_model', 'full_model_args', 'smallest_image_size',
           'stem_stride_for', 'takes_image_size']

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
    """model_args: what else the constructor needs (a classifier's stem_stride, the selector's in_features);
    checkpoints store them."""
    if name not in MODELS:
        raise ValueError(f"unknown architecture '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **model_args)


def full_model_args(name: str, model_args: dict) -> dict:
    """model_args with the constructor's defaults filled in: a checkpoint written before an argument existed
    stores none, and its model was built with the default."""
    params = list(inspect.signature(MODELS[name]).parameters.values())[1:]  # after num_classes
    return {p.name: model_args.get(p.name, p.default) for p in params}


def takes_image_size(name: str, size: int, **model_args) -> bool:
    """Whether the architecture's pooling leaves at least a pixel of a size x size image. Shapes only: on
    the meta device nothing is computed or allocated."""
    return _takes_image_size(_meta_model(name, **model_args), size)


def smallest_image_size(name: str, above: int = 0, limit: int = 1024, **model_args) -> int | None:
    """The smallest image size the architecture takes, above a size known to fail and up to limit (None if
    none). A larger image never fails where a smaller one passes, so doubling and then bisecting finds it in a
    few meta passes, each slow for a deep model."""
    model = _meta_model(name, **model_args)
    takes = lambda size: _takes_image_size(model, size)
    fails, high = above, max(2 * above, 1)
    while not takes(high):
        if high >= limit:
            return None
        fails, high = high, min(2 * high, limit)
    return fails + 1 + bisect.bisect_left(range(fails + 1, high + 1), True, key=takes)


def _meta_model(name: str, **model_args) -> nn.Module:
    with torch.device('meta'):
        return build_model(name, 2, **model_args).eval()


def _takes_image_size(meta_model: nn.Module, size: int) -> bool:
    try:
        meta_model(torch.empty(2, 3, size, size, device='meta'))
    except RuntimeError:
        return False
    return True
