"""A classifier's starting weights: torchvision's ImageNet-trained ones, or those of a file.

Every tensor whose name and shape fit the model is copied; the rest keep their random initialisation. From
ImageNet that leaves the classifier and, below stem stride 4, the 3x3 stem that replaces torchvision's 7x7
one. A file may hold a state dict (torch.save(model.state_dict()), of a DataParallel or compiled model too)
or a checkpoint of this project, whose classifier also fits where it has as many classes. A file most of whose
tensors do not fit holds another kind of model, and is refused.
"""
import os
import re

import torch
import torchvision

from . import UserError
from .checkpoint import failure_reason

RANDOM, IMAGENET = 'random', 'imagenet'


def initialise(model: torch.nn.Module, arch: str, source: str) -> str:
    """Copy into model the weights of source (IMAGENET or a file) that fit it; returns a line saying which."""
    weights = _learned(imagenet_weights(arch) if source == IMAGENET else file_weights(source))
    own = _learned(model.state_dict())
    fits = {name: tensor for name, tensor in weights.items() if name in own and own[name].shape == tensor.shape}
    if 2 * len(fits) <= len(weights):  # a model of another kind, whose few namesakes (fc.bias) mean nothing here
        raise UserError(f"{len(fits)} of the {len(weights)} tensors in '{source}' fit {arch} (by name and shape): "
                        f"they are another model's; pass weights saved from a {arch}")
    model.load_state_dict(fits, strict=False)
    left = [name for name in own if name not in fits]
    shown = ', '.join(left[:4]) + (f' and {len(left) - 4} more' if len(left) > 4 else '')
    return f"{arch} starts from {len(fits)} of its {len(own)} tensors in '{source}'" + (
        f'; random: {shown}' if left else '')


def _learned(state: dict) -> dict:
    """Weights and running statistics, not BatchNorm's batch counters, which old published files lack."""
    return {name: tensor for name, tensor in state.items() if not name.endswith('num_batches_tracked')}


def check_source(arch: str, source: str):
    """Before any data is read: the file exists, or torchvision's weights are in its cache, downloaded if need be."""
    if source == IMAGENET:
        _from_torchvision(arch, lambda weights: weights.get_state_dict(progress=True, check_hash=True))
    elif source != RANDOM:
        file_weights(source)


def imagenet_weights(arch: str) -> dict:
    """torchvision's default ImageNet weights of arch, with the names its current model uses: torchvision
    renames the old keys of some published files (DenseNet's) as it loads them."""
    return _from_torchvision(arch, lambda weights: torchvision.models.get_model(arch, weights=weights).state_dict())


def _from_torchvision(arch: str, load):
    if arch not in torchvision.models.list_models():
        raise UserError(f'torchvision has no ImageNet weights for {arch}; pass --init {RANDOM} or a file')
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return load(weights)
    except Exception as err:  # offline (URLError), a damaged file in the cache, a cache that cannot be written
        why = failure_reason(getattr(err, 'reason', None) or err)  # a URLError's reason is its useful part
        cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
        raise UserError(f"cannot load torchvision's ImageNet weights of {arch} ({why}); where there is no internet, "
                        f"copy {weights.url} to '{cached}', in place of any damaged copy there") from None


def weights_file(path: str) -> str:
    """The file --init names: itself, or a run directory's best.pt."""
    path = os.path.join(path, 'best.pt') if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise UserError(f"--init '{path}' does not exist; pass {IMAGENET}, {RANDOM} or a file of saved weights")
    return path


def file_weights(path: str) -> dict:
    """The state dict in a file, with the names the model uses."""
    path = weights_file(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch.load raises many types for a file that is not one of its own
        raise UserError(f"--init '{path}' is not a file of saved torch weights ({err.__class__.__name__}); pass one "
                        f"written by torch.save") from None
    if isinstance(state, dict):
        state = next((state[key] for key in ('model', 'state_dict') if isinstance(state.get(key), dict)), state)
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)} \
        if isinstance(state, dict) else {}
    if not tensors:
        raise UserError(f"--init '{path}' holds no named weights; pass a state dict saved with "
                        f"torch.save(model.state_dict(), path)")
    return {_current_name(name): value for name, value in tensors.items()}


def _current_name(name: str) -> str:
    """Without DataParallel's and torch.compile's prefixes; DenseNet's layers as torchvision now names them
    ('norm1', where its published ImageNet file says 'norm.1')."""
    name = re.sub(r'^((module|_orig_mod)\.)+', '', name)
    return re.sub(r'(denselayer\d+\.(?:norm|relu|conv))\.([12]\.)', r'\1\2', name)
