import pytest
import torch

from models import (MODELS, STEM_STRIDES, STUDENTS, TEACHER, build_model, full_model_args, smallest_image_size,
                    stem_stride_for, takes_image_size)
from distill.runtime import fuse_for_inference
from distill.metrics import count_macs, count_params

CLASSIFIERS = [name for name in MODELS if name != 'selector']


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_forward_backward_shapes(name):
    model = build_model(name, 7)
    images = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = model(images)
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert images.grad is not None and images.grad.shape == images.shape
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('name', CLASSIFIERS)
@pytest.mark.parametrize('stem_stride', STEM_STRIDES)
def test_every_stem_trains(name, stem_stride):
    model = build_model(name, 7, stem_stride=stem_stride)
    images = torch.randn(2, 3, 32, 32)
    model(images).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('size, stem_stride', [(8, 1), (63, 1), (64, 2), (127, 2), (128, 4), (1024, 4)])
def test_the_stem_stride_follows_the_image_size(size, stem_stride):
    assert stem_stride_for(size) == stem_stride


@pytest.mark.parametrize('name', CLASSIFIERS)
@pytest.mark.parametrize('size, most', [(64, 1.1), (128, 1.1), (224, 3.5)])
def test_a_larger_picture_costs_about_what_a_32px_one_does_with_the_stem_chosen_for_it(name, size, most):
    def macs(stem_stride, image_size):  # shapes only, on the meta device: nothing is computed
        return count_macs(build_model(name, 10, stem_stride=stem_stride).to('meta'), image_size, 'meta')
    at_32 = macs(1, 32)
    assert macs(stem_stride_for(size), size) < most * at_32
    assert macs(1, size) >= 0.95 * (size / 32) ** 2 * at_32  # the 32-px stem keeps every pixel, at every size


def test_an_unknown_stem_stride_is_a_clear_error():
    with pytest.raises(ValueError, match='stem stride 3 is not one of 1, 2, 4'):
        build_model('resnet50', 10, stem_stride=3)


def test_a_checkpoint_that_names_no_stem_was_built_with_the_32px_one():
    assert full_model_args('googlenet', {}) == {'stem_stride': 1}
    assert full_model_args('googlenet', {'stem_stride': 4}) == {'stem_stride': 4}
    assert full_model_args('selector', {'in_features': 10}) == {'in_features': 10, 'hidden': 256, 'dropout': 0.2}


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_outputs_are_logits_not_probabilities(name):
    # The original ended its students with a softmax, which breaks the KD loss.
    model = build_model(name, 5).train()
    torch.nn.init.normal_(list(model.parameters())[-2], std=1.0)  # make the head's output spread out
    logits = model(torch.randn(6, 3, 16, 16)).detach()
    assert (logits < 0).any()
    assert not torch.allclose(logits.sum(1), torch.ones(6), atol=1e-3)


@pytest.mark.parametrize('stem_stride', [1, 4])
@pytest.mark.parametrize('name', CLASSIFIERS)
def test_the_smallest_image_size_found_on_meta_tensors_is_the_real_one(name, stem_stride):
    smallest = smallest_image_size(name, stem_stride=stem_stride)
    assert takes_image_size(name, smallest, stem_stride=stem_stride)
    assert smallest == 1 or not takes_image_size(name, smallest - 1, stem_stride=stem_stride)
    model = build_model(name, 3, stem_stride=stem_stride).eval()
    assert model(torch.randn(2, 3, smallest, smallest)).shape == (2, 3)
    if smallest > 1:
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize('name, params_m, macs_g', [
    ('resnet50', 23.5, 1.30), ('densenet121', 7.0, 0.89), ('googlenet', 5.6, 0.45)])
def test_cifar_models_match_the_guide(name, params_m, macs_g):
    model = build_model(name, 10)
    assert count_params(model) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert count_macs(model, 32) / 1e9 == pytest.approx(macs_g, abs=0.01)


def test_the_selector_scores_each_expert():
    selector = build_model('selector', 3, in_features=20)
    inputs = torch.randn(5, 20, requires_grad=True)
    selector(inputs).sum().backward()  # trained end to end: no detached part
    assert selector(inputs).shape == (5, 3) and inputs.grad is not None


@pytest.mark.parametrize('student', STUDENTS)
def test_students_are_cheaper_than_the_teacher_and_the_selector_is_tiny(student):
    macs = count_macs(build_model(student, 10), 32)
    assert macs < count_macs(build_model(TEACHER, 10), 32)
    assert count_macs(build_model('selector', 2, in_features=10), torch.zeros(1, 10)) < 0.01 * macs


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model('vgg', 10)


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_fusing_for_inference_folds_batchnorm_and_keeps_the_outputs(name):
    model = build_model(name, 10).train()
    model(torch.randn(16, 3, 16, 16))  # give BatchNorm running statistics that are not the identity
    images = torch.randn(3, 3, 16, 16)
    fused = fuse_for_inference(model)
    count = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert count(fused) < count(model)  # every BN right after a conv is gone (DenseNet keeps its pre-activation BNs)
    with torch.no_grad():
        assert torch.allclose(fused(images), model.eval()(images), rtol=1e-4, atol=1e-4)


def test_batchnorm_is_folded_on_the_cpu_only():
    model = build_model('googlenet', 10)
    assert fuse_for_inference(model, torch.device('cuda')) is model and not model.training


def test_macs_are_counted_where_the_model_is():
    """selectorTrain.py counts a CPU selector's MACs on inputs that live on the GPU (the meta device stands in)."""
    on_cpu = count_macs(build_model('selector', 2, in_features=20), torch.zeros(1, 20))
    assert count_macs(build_model('selector', 2, in_features=20).to('meta'), torch.zeros(1, 20)) == on_cpu > 0
