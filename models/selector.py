"""The selector: a small CNN that scores, per image, how likely each expert is right.

It has one output per expert (a logit of "this expert classifies the image
correctly"), so it serves any number of experts. At 32 px it costs about
13 MMACs, a few percent of the cheapest student, so routing saves compute.
Design in the spirit of the gating networks of Shazeer et al., "Outrageously
Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", 2017.
https://arxiv.org/abs/1701.06538
"""
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Selector(nn.Module):
    def __init__(self, num_experts: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, width), nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),
            _conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),
            _conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_experts)

    def forward(self, x):
        return self.head(self.features(x))
