"""torchvision's ImageNet classifiers with a stem sized to the images.

The ImageNet stems shrink an image 4x before the first block (a strided 7x7
convolution, then a max-pool), which on 32-px images costs several points of
CIFAR accuracy. With stem_stride 1 each constructor below swaps that stem for a
3x3 stride-1 convolution, as kuangliu/pytorch-cifar does; with 2 it keeps the
pool after that convolution; with 4 it keeps torchvision's stem. The rest of
torchvision's model is unchanged. stem_stride_for picks the stride from the
image size, so that the first block sees 32 to 63 px, as on CIFAR, up to
ImageNet's 56 px at 224: to 255 px an image costs at most about 4x what a
32-px one does, where the 32-px stem alone costs (S/32)^2 times as much.
All models return logits (no softmax).

- ResNet50: He et al., "Deep Residual Learning for Image Recognition", 2015.
  https://arxiv.org/abs/1512.03385
- DenseNet121: Huang et al., "Densely Connected Convolutional Networks", 2016.
  https://arxiv.org/abs/1608.06993
- GoogLeNet: Szegedy et al., "Going Deeper with Convolutions", 2014.
  https://arxiv.org/abs/1409.4842
"""
from torch import nn
from torchvision import models
from torchvision.models.googlenet import BasicConv2d

STEM_STRIDES = (1, 2, 4)


def stem_stride_for(image_size: int) -> int:
    return 1 if image_size < 64 else 2 if image_size < 128 else 4


def _keeps(stem_stride: int) -> tuple[bool, bool]:
    """Which parts of the ImageNet stem a stride keeps: (its strided convolution, its pool)."""
    if stem_stride not in STEM_STRIDES:
        raise ValueError(f"stem stride {stem_stride} is not one of {', '.join(map(str, STEM_STRIDES))}")
    return stem_stride == 4, stem_stride >= 2


def resnet50(num_classes: int, stem_stride: int = 1) -> nn.Module:
    # Zero-init the last BN of each block (Goyal et al., https://arxiv.org/abs/1706.02677): at default
    # init the first gradients are far larger and a short run at lr 0.1 diverges in its first epoch.
    model = models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=True)
    keeps_conv, keeps_pool = _keeps(stem_stride)
    if not keeps_conv:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if not keeps_pool:
        model.maxpool = nn.Identity()
    return model


def densenet121(num_classes: int, stem_stride: int = 1) -> nn.Module:
    model = models.densenet121(weights=None, num_classes=num_classes)
    keeps_conv, keeps_pool = _keeps(stem_stride)
    if not keeps_conv:
        model.features.conv0 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if not keeps_pool:
        model.features.pool0 = nn.Identity()
    return model


def googlenet(num_classes: int, stem_stride: int = 1) -> nn.Module:
    # Keep maxpool2 at every stride: without any early pool GoogLeNet costs more MACs than the
    # ResNet50 teacher (1.45 G vs 1.30 G at 32 px), which defeats distillation.
    model = models.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    keeps_conv, keeps_pool = _keeps(stem_stride)
    if not keeps_conv:
        model.conv1 = BasicConv2d(3, 64, kernel_size=3, stride=1, padding=1)
    if not keeps_pool:
        model.maxpool1 = nn.Identity()
    return model
