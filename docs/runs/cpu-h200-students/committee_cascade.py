"""A cascade whose images sent on are answered by the average of both models' probabilities (both have run, so
the average costs nothing more; Wang et al.'s cascades of committees), against one answered by the costlier
model alone. From the H200 run-4 logits: the threshold is the cheapest that reaches the costlier model's own
accuracy on the tuning images (no val margin), then scored once on test. The time is modelled as GoogLeNet's
measured 0.43x of DenseNet121's on this CPU plus the share sent on (routing itself adds about 1.5%).

    PYTHONPATH=. python docs/runs/cpu-h200-students/committee_cascade.py   # needs results/h200d (seconds)
"""
import torch
import torch.nn.functional as F
from h200_run import require  # beside this script
require('results/h200d/gpu-check/logits')

LOGITS = 'results/h200d/gpu-check/logits/'
CHEAP_TIME = 0.43  # GoogLeNet's time / DenseNet121's, routing_overhead.py (0.39-0.58 over repeats)
cheap = torch.load(LOGITS + 'googlenet-logits.pt', weights_only=True)


def probabilities(logits, parts):
    return torch.cat([F.softmax(logits[p].float(), 1) for p in parts])


for costly_name in ('densenet121', 'teacher'):
    costly = torch.load(LOGITS + f'{costly_name}-logits.pt', weights_only=True)
    for tune in (['val'], ['route', 'val']):
        data = {split: (torch.cat([cheap['labels'][p] for p in parts]), probabilities(cheap, parts),
                        probabilities(costly, parts)) for split, parts in (('tune', tune), ('test', ['test']))}
        for answer in ('costlier alone', 'average of both'):
            def routed(threshold, labels, p_cheap, p_costly):
                sent = p_cheap.max(1).values < threshold
                sent_answer = (p_cheap + p_costly) / 2 if answer == 'average of both' else p_costly
                right = torch.where(sent[:, None], sent_answer, p_cheap).argmax(1) == labels
                return right.float().mean().item(), sent.float().mean().item()
            reference = {s: (p_costly.argmax(1) == labels).float().mean().item()
                         for s, (labels, _, p_costly) in data.items()}
            reaching = [(share, t) for t in torch.linspace(0.5, 1.0, 501).tolist()
                        for accuracy, share in [routed(t, *data['tune'])] if accuracy >= reference['tune']]
            share, threshold = min(reaching)
            accuracy, share_test = routed(threshold, *data['test'])
            time = f', modelled time {CHEAP_TIME + share_test:.2f}x' if costly_name == 'densenet121' else ''
            print(f"{costly_name}, tuned on {' + '.join(tune)}, sent on answered by the {answer}: threshold "
                  f"{threshold:.3f} ({share:.1%} sent on); test {100 * accuracy:.2f}% against {costly_name}'s "
                  f"{100 * reference['test']:.2f}% ({100 * (accuracy - reference['test']):+.2f}), "
                  f"{share_test:.1%} sent on{time}")
