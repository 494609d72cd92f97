"""torchvision's ImageNet classifiers with a stem for 32-px images.

The ImageNet stems shrink a 32-px image 4x before the first block, which
costs several points of CIFAR accuracy. Each constructor below swaps the stem
for a 3x3 stride-1 convolution, as kuangliu/pytorch-cifar does, and keeps the
rest of torchvision's model unchanged. All models return logits (no softmax).

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


def resnet50(num_classes: int) -> nn.Module:
    # Zero-init the last BN of each block (Goyal et al., https://arxiv.org/abs/1706.02677): at default
    # init the first gradients are far larger and a short run at lr 0.1 diverges in its first epoch.
    model = models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def densenet121(num_classes: int) -> nn.Module:
    model = models.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    return model


def googlenet(num_classes: int) -> nn.Module:
    # Keep maxpool2: without any early pool GoogLeNet costs more MACs than the
    # ResNet50 teacher (1.45 G vs 1.30 G at 32 px), which defeats distillation.
    model = models.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    model.conv1 = BasicConv2d(3, 64, kernel_size=3, stride=1, padding=1)
    model.maxpool1 = nn.Identity()
    return model
