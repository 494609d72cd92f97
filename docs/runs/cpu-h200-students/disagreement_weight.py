"""The selector trained with the route images on which the students disagree weighted 1, 3, 10 and 30 times
(selectorTrain.py --disagreement-weight), from the H200 run-4 students' logits (route images only, no
cropped copies), three seeds each; the epoch kept by its val score, as selectorTrain.py keeps it. Scored as selectorTrain.py scores it (deferral_accuracy, GoogLeNet at
0.45x DenseNet121's cost), beside the reference rankings.

    PYTHONPATH=. python docs/runs/cpu-h200-students/disagreement_weight.py   # needs results/h200d (about a minute)
"""
import torch
from distill.engine import WarmupCosine, build_optimizer, predict_logits
from distill.loaders import TensorLoader
from distill.routing.decisions import deferral_accuracy, expert_correctness, ranking_references, confidences, selector_inputs
from distill.routing.selection import selection_step
from models import build_model
from h200_run import require  # beside this script
require('results/h200d/gpu-check/logits')
L = 'results/h200d/gpu-check/logits/'
g = torch.load(L + 'googlenet-logits.pt', weights_only=True); d = torch.load(L + 'densenet121-logits.pt', weights_only=True)
costs = torch.tensor([0.45, 1.0])
inputs = {p: selector_inputs(g[p].float()) for p in ('route', 'val', 'test')}
correct = {p: expert_correctness([g[p].float(), d[p].float()], g['labels'][p]) for p in ('route', 'val', 'test')}
for p in ('val', 'test'):
    refs = ranking_references(confidences([g[p].float()]), correct[p], costs)
    print(p, ', '.join(f'{k} {100 * v:.3f}' for k, v in refs.items()))
print('route: the students disagree on', f"{(correct['route'][:, 0] != correct['route'][:, 1]).float().mean():.1%}")
epochs, batch = 30, 256
for weight in (1, 3, 10, 30):
    rows = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model('selector', 2, in_features=10)
        loader = TensorLoader(inputs['route'], correct['route'], batch, train=True, seed=seed)
        opt = build_optimizer(model, 0.05, 5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(epochs * len(loader), len(loader)))
        step = selection_step(model, weight)
        best = (-1, None, None)
        for epoch in range(epochs):
            loader.set_epoch(epoch); model.train()
            for x, y, i in loader:
                loss, _ = step(x, y, i); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            model.eval()
            score = {p: deferral_accuracy(predict_logits(model, TensorLoader(inputs[p], correct[p], 1024))[0], correct[p], costs)
                     for p in ('val', 'test')}
            if score['val'] > best[0]:
                best = (score['val'], score['test'], epoch + 1)
        rows.append(best)
    print(f'weight {weight:>2}: val ' + ', '.join(f'{100 * v:.3f}' for v, _, _ in rows) + '; test ' +
          ', '.join(f'{100 * t:.3f}' for _, t, _ in rows) + '; best epochs ' + ', '.join(str(e) for _, _, e in rows), flush=True)
