"""Does any other reading of GoogLeNet's output rank images for deferral better than its top probability (what
the cascade uses and the selector learns)? Each ranking scored as selectorTrain.py scores the selector
(deferral_accuracy: routed accuracy averaged over the whole cost range; GoogLeNet at 0.45x DenseNet121's
cost), on the H200 run-4 students' logits that gpu_check.sh brought back (bf16, computed on the H200).

    PYTHONPATH=. python docs/runs/cpu-h200-students/rankings.py   # needs results/h200d (seconds)
"""
import torch, torch.nn.functional as F
from distill.routing.decisions import deferral_accuracy, expert_correctness
from h200_run import require  # beside this script
require('results/h200d/gpu-check/logits')
L = 'results/h200d/gpu-check/logits/'
g = torch.load(L + 'googlenet-logits.pt', weights_only=True); d = torch.load(L + 'densenet121-logits.pt', weights_only=True)
costs = torch.tensor([0.45, 1.0])
for part in ('val', 'test'):
    gl, dl, y = g[part].float(), d[part].float(), g['labels'][part]
    correct = expert_correctness([gl, dl], y)
    p = F.softmax(gl, 1); top2 = p.topk(2, 1).values
    ranks = {'max prob': top2[:, 0], 'margin': top2[:, 0] - top2[:, 1], 'neg entropy': (p * p.clamp_min(1e-12).log()).sum(1),
             'energy': torch.logsumexp(gl, 1), 'max logit': gl.max(1).values,
             **{f'max prob T={t}': F.softmax(gl / t, 1).max(1).values for t in (0.5, 2, 4)},
             'best possible': 20 * (2 * correct[:, 0] - 1) - 20 * (2 * correct[:, 1] - 1)}
    row = []
    for name, r in ranks.items():
        q = (torch.argsort(torch.argsort(r.double(), stable=True)).double() + 0.5) / len(r)
        scores = torch.stack([torch.logit(q), torch.zeros_like(q)], 1)  # by rank: no ties from saturation
        # deferral_accuracy ranks by scores[:,0]-scores[:,1] through selector_sweep; any monotone map of r is the same
        row.append(f'{name} {100 * deferral_accuracy(scores.float(), correct, costs):.3f}')
    print(part, f'G {correct[:,0].float().mean():.4f} D {correct[:,1].float().mean():.4f}:', '; '.join(row))
