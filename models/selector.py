"""The selector: a small network that reads the cheapest expert's softmax probabilities, sorted, and scores,
for each expert, how likely it is to classify the image correctly.

The cheapest expert runs on every image anyway, so its probabilities cost nothing more to read, and how
sure it is says far more about an image than its raw pixels do: a pixel-level CNN of a few MMACs learned
almost nothing on CIFAR-10 (docs/routing.md). With one output per expert it serves any number of experts.
In the spirit of learned deferral in cascades (Wang et al., "Wisdom of Committees", ICLR 2022,
https://arxiv.org/abs/2012.01988; Jitkrittum et al., "When Does Confidence-Based Cascade Deferral Suffice?",
NeurIPS 2023, https://arxiv.org/abs/2307.02764).
"""
import torch
from torch import nn


class Selector(nn.Module):
    def __init__(self, num_experts: int, in_features: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_features),  # the top probability is near 1, the others near 0
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())
