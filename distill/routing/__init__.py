"""Routing: which expert answers each image, and running each expert only on the images that need it.

Experts are ordered cheapest first by their cost, timed on the device that runs them (or MACs). Two
modes, both tuned on held-out images (the cascade on route and val, the selector on val) and reported
side by side:
- cascade (Wang et al., "Wisdom of Committees", ICLR 2022, https://arxiv.org/abs/2012.01988): expert k
  answers where its top softmax probability reaches threshold k; the other images go on to expert k+1,
  and the last expert answers whatever is left.
- selector: the cheapest expert runs on every image; the trained selector reads its sorted softmax
  probabilities, predicts for each expert the chance that it is right, and sends the image to
  argmax P(right) - w x extra cost. An image kept by the cheapest expert costs nothing more; any other
  runs on exactly one costlier expert.

One concern per module: the experts and their measured costs (experts.py); the decisions of both modes, their
sweeps and the choice of an operating point on held-out images (decisions.py); running each expert only on
the images routed to it (router.py); the selector's data, its training step and the tuning of both modes on
val (selection.py); the reports (report.py). selectorTrain.py, infer.py, evaluate.py and the benchmarks all
use them. To add a routing baseline, add its decision in decisions.py and a row in routing_report.
"""
