"""An image sent on has run on both students: would answering it with their average (both ran, so it costs
nothing more) let the routing send fewer images on for DenseNet121's accuracy? The H200 run-4 students'
logits, images sent on in order of GoogLeNet's confidence, least sure first.

    PYTHONPATH=. python docs/runs/cpu-h200-students/ensemble_sent_on.py   # needs results/h200d (seconds)
"""
import torch, torch.nn.functional as F
from h200_run import require  # beside this script
require('results/h200d/gpu-check/logits')
L = 'results/h200d/gpu-check/logits/'
g = torch.load(L + 'googlenet-logits.pt', weights_only=True); d = torch.load(L + 'densenet121-logits.pt', weights_only=True)
for part in ('val', 'test'):
    y = g['labels'][part]; pg = F.softmax(g[part].float(), 1); pd = F.softmax(d[part].float(), 1)
    acc = lambda p: (p.argmax(1) == y).float().mean().item()
    conf = pg.max(1).values
    order = torch.argsort(conf)  # least confident first: sent on first
    n = len(y)
    line = [f'{part}: G {acc(pg):.4f} D {acc(pd):.4f} avg-prob ensemble {acc(pd + pg):.4f} avg-logprob {acc(pd.log() + pg.log()):.4f}']
    for f in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
        k = int(f * n); sent = torch.zeros(n, dtype=torch.bool); sent[order[:k]] = True
        alone = torch.where(sent[:, None], pd, pg); ens = torch.where(sent[:, None], (pd + pg) / 2, pg)
        line.append(f'  sent {f:.0%}: D answers {acc(alone):.4f}, G+D answer {acc(ens):.4f}')
    print('\n'.join(line))
