"""Does weighting the two students in the committee answer beat their plain average? From the H200 run-4 logits:
the images sent on are answered by w * GoogLeNet's probabilities + (1 - w) * DenseNet121's; the cascade's
threshold is the cheapest that reaches DenseNet121's accuracy on route + val (no val margin), scored once on
test; w = 0 is DenseNet121 alone, w = 0.5 the average that routing uses. The geometric mean (the average of the
log-probabilities) is the last line.

    PYTHONPATH=. python docs/runs/cpu-h200-students/committee_weight.py   # needs results/h200d (seconds)
"""
import torch
import torch.nn.functional as F
from h200_run import require  # beside this script
require('results/h200d/gpu-check/logits')

LOGITS = 'results/h200d/gpu-check/logits/'
cheap, costly = (torch.load(LOGITS + f'{name}-logits.pt', weights_only=True) for name in ('googlenet', 'densenet121'))
SPLITS = {'tune': ['route', 'val'], 'test': ['test']}
data = {split: (torch.cat([cheap['labels'][p] for p in parts]),
                *(torch.cat([F.softmax(model[p].float(), 1) for p in parts]) for model in (cheap, costly)))
        for split, parts in SPLITS.items()}


def routed(weight, threshold, labels, p_cheap, p_costly):
    sent = p_cheap.max(1).values < threshold
    answer = torch.where(sent[:, None], weight * p_cheap + (1 - weight) * p_costly, p_cheap)
    return (answer.argmax(1) == labels).float().mean().item(), sent.float().mean().item()


reference = {split: (p_costly.argmax(1) == labels).float().mean().item()
             for split, (labels, _, p_costly) in data.items()}
print(f"DenseNet121 alone: route + val {100 * reference['tune']:.2f}%, test {100 * reference['test']:.2f}%")
for weight in (0.0, 0.3, 0.35, 0.4, 0.45, 0.5):
    everything = {split: routed(weight, 2.0, *data[split])[0] for split in data}
    reaching = [(share, t) for t in torch.linspace(0.5, 1.0, 501).tolist()
                for accuracy, share in [routed(weight, t, *data['tune'])] if accuracy >= reference['tune']]
    share, threshold = min(reaching)
    accuracy, share_test = routed(weight, threshold, *data['test'])
    print(f"w {weight:.2f}: every image sent on {100 * everything['tune']:.2f}% / {100 * everything['test']:.2f}%; "
          f"threshold {threshold:.3f}, test {100 * accuracy:.2f}% ({100 * (accuracy - reference['test']):+.2f}), "
          f"{share_test:.1%} sent on")
log_p = {split: [torch.cat([F.log_softmax(model[p].float(), 1) for p in parts]) for model in (cheap, costly)]
         for split, parts in SPLITS.items()}
print('geometric mean, every image sent on: ' + ' / '.join(
    f"{100 * ((a + b).argmax(1) == data[split][0]).float().mean().item():.2f}%" for split, (a, b) in log_p.items()))
