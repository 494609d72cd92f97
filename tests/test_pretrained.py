import argparse
import os
import re
import urllib.error

import pytest
import torch
import torchvision

from conftest import ROOT, make_image_folder, run_main
from distill import UserError
from distill.cli import initial_model
from distill.pretrained import check_source, initialise
from models import MODELS, build_model

CLASSIFIERS = [name for name in MODELS if name != 'selector']
STEMS = {'resnet50': ['conv1.weight'], 'densenet121': ['features.conv0.weight'], 'googlenet': ['conv1.conv.weight']}
HEADS = {'resnet50': 'fc', 'densenet121': 'classifier', 'googlenet': 'fc'}


def learned(state: dict) -> dict:
    """What --init counts and copies: not BatchNorm's batch counters, which old published files lack."""
    return {name: tensor for name, tensor in state.items() if not name.endswith('num_batches_tracked')}


def publish_imagenet_weights(arch: str, torch_home) -> dict:
    """Random weights written where torchvision's download leaves its ImageNet file, in that file's format:
    GoogLeNet's with its auxiliary heads, DenseNet121's with the old names ('norm.1') and, as old files,
    no batch counts. Returns them as a torchvision model names them."""
    extra = {'aux_logits': True, 'init_weights': False} if arch == 'googlenet' else {}
    weights = torchvision.models.get_model(arch, weights=None, **extra).state_dict()
    published = {re.sub(r'(denselayer\d+\.(?:norm|relu|conv))([12])\.', r'\1.\2.', name): tensor
                 for name, tensor in weights.items() if not name.endswith('num_batches_tracked')}
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    os.makedirs(os.path.join(torch_home, 'hub', 'checkpoints'), exist_ok=True)
    torch.save(published, os.path.join(torch_home, 'hub', 'checkpoints', os.path.basename(url)))
    return weights


@pytest.fixture(scope='module')
def imagenet_home(tmp_path_factory):
    """A torch home holding every classifier's published file, made once: each takes seconds."""
    home = tmp_path_factory.mktemp('torch-home')
    return home, {arch: publish_imagenet_weights(arch, home) for arch in CLASSIFIERS}


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


@pytest.mark.parametrize('arch', CLASSIFIERS)
@pytest.mark.parametrize('stem_stride', [1, 4])
@pytest.mark.parametrize('given_as', ['imagenet', 'its file'])
def test_imagenet_weights_fill_all_but_the_classifier_and_a_stem_of_another_shape(arch, stem_stride, given_as,
                                                                                  imagenet_home, monkeypatch, offline):
    home, published = imagenet_home
    monkeypatch.setenv('TORCH_HOME', str(home))
    source = 'imagenet' if given_as == 'imagenet' else os.path.join(
        home, 'hub', 'checkpoints', os.path.basename(torchvision.models.get_model_weights(arch).DEFAULT.url))
    torch.manual_seed(0)
    model = build_model(arch, 10, stem_stride=stem_stride)
    line = initialise(model, arch, source)
    random = {f'{HEADS[arch]}.weight', f'{HEADS[arch]}.bias'} | (set(STEMS[arch]) if stem_stride < 4 else set())
    state, weights = learned(model.state_dict()), published[arch]
    assert f'{arch} starts from {len(state) - len(random)} of its {len(state)} tensors' in line
    copied = {name for name, tensor in state.items() if name in weights and tensor.shape == weights[name].shape
              and torch.equal(tensor, weights[name])}
    assert set(state) - copied == random


def test_imagenet_weights_offline_and_not_in_the_cache_say_where_to_put_the_file(tmp_path, monkeypatch, offline):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    cached = str(tmp_path / 'empty' / 'hub' / 'checkpoints' / 'googlenet-1378be20.pth')
    with pytest.raises(UserError, match=re.escape(f"(Name or service not known); where there is no internet, copy "
                                                  f"https://download.pytorch.org/models/googlenet-1378be20.pth to "
                                                  f"'{cached}'")):
        check_source('googlenet', 'imagenet')


def test_weights_of_a_file_a_run_or_a_compiled_dataparallel_model_are_copied_whole(tmp_path):
    torch.manual_seed(1)
    trained = build_model('googlenet', 10).state_dict()
    torch.save({'arch': 'googlenet', 'model': trained}, tmp_path / 'best.pt')  # a run directory of this project
    torch.save({'state_dict': {'module._orig_mod.' + name: t for name, t in trained.items()}}, tmp_path / 'dp.pth')
    for source in (str(tmp_path), str(tmp_path / 'dp.pth')):
        torch.manual_seed(2)
        model = build_model('googlenet', 10)
        count = len(learned(trained))
        assert initialise(model, 'googlenet', source).endswith(f"{count} of its {count} tensors in '{source}'")
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in trained.items())


@pytest.mark.parametrize('rank, says', [('0', True), ('1', False)])
def test_every_torchrun_process_starts_from_the_file_and_only_the_first_says_so(
        tmp_path, monkeypatch, capsys, rank, says):
    torch.manual_seed(1)
    trained = build_model('googlenet', 10).state_dict()
    torch.save(trained, tmp_path / 'weights.pt')
    monkeypatch.setenv('RANK', rank)
    args = argparse.Namespace(seed=0, arch='googlenet', init=str(tmp_path / 'weights.pt'), resume=False,
                              out=str(tmp_path / 'run'), device='cpu', amp='off', batch_size=8)
    data = argparse.Namespace(classes=list(range(10)), image_size=32, parts={'train': range(64)})
    model = initial_model(args, data, {})
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in trained.items())
    assert ('googlenet starts from' in capsys.readouterr().out) == says


@pytest.mark.parametrize('content, message', [
    (b'not weights', "is not a file of saved torch weights"),
    ([1, 2], 'holds no named weights'),
    ({'epochs': 3}, 'holds no named weights'),
    (None, 'does not exist; pass imagenet, random or a file of saved weights'),
    ({'features.conv0.weight': torch.zeros(64, 3, 3, 3)}, '0 of the 1 tensors in .* fit resnet50'),
    ('googlenet', r"1 of the 287 tensors in .* fit resnet50 \(by name and shape\): they are another model's"),
])
def test_an_init_file_that_is_not_weights_for_the_model_is_one_line(tmp_path, content, message):
    path = tmp_path / 'weights.pth'
    if content == 'googlenet':  # its fc.bias alone has a namesake of the same shape in a resnet50
        torch.save(build_model('googlenet', 10).state_dict(), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message):
        check_source('resnet50', str(path))
        initialise(build_model('resnet50', 10), 'resnet50', str(path))


def test_teacher_train_starts_from_imagenet_weights_and_records_it(tmp_path, imagenet_home, monkeypatch, offline):
    home, published = imagenet_home
    monkeypatch.setenv('TORCH_HOME', str(home))
    folder = make_image_folder(tmp_path / 'data', size=8)
    result = run_main(ROOT / 'teacherTrain.py', '--arch', 'googlenet', '--init', 'imagenet', '--dataset', 'folder',
                      '--data-dir', folder, '--val-size', '6', '--route-size', '6', '--batch-size', '8', '--epochs',
                      '1', '--lr', '1e-9', '--weight-decay', '0', '--device', 'cpu', '--out', tmp_path / 'run')
    assert 'googlenet starts from 284 of its 287 tensors' in result.stdout
    state = torch.load(tmp_path / 'run' / 'best.pt', weights_only=True)
    assert state['config']['init'] == 'imagenet'
    assert torch.allclose(state['model']['inception5b.branch1.conv.weight'],
                          published['googlenet']['inception5b.branch1.conv.weight'], atol=1e-6)
