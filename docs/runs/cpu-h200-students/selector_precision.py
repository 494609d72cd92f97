"""How often the selector's choice changes with the precision it runs in: bf16 autocast against float32."""
#   PYTHONPATH=. python docs/runs/cpu-h200-students/selector_precision.py   # needs checkpoints/h200d and results/h200d
import torch
from distill.checkpoint import load_checkpoint
from distill.routing.decisions import selector_inputs, selector_choice, expert_correctness
from distill.routing.experts import load_selector
from distill.checkpoint import model_from_checkpoint
from h200_run import require  # beside this script
require('checkpoints/h200d/selector/best.pt', 'results/h200d/gpu-check/logits')
path = 'checkpoints/h200d/selector/best.pt'
state = load_selector(path)
selector = model_from_checkpoint(state, path).eval()
logits = {n: load_checkpoint(f'results/h200d/gpu-check/logits/{n}-logits.pt') for n in ('googlenet', 'densenet121')}
for part in ('val', 'test'):
    inputs = selector_inputs(logits['googlenet'][part].float())
    correct = expert_correctness([logits[n][part].float() for n in ('googlenet', 'densenet121')], logits['googlenet']['labels'][part])
    with torch.inference_mode():
        fp32 = selector(inputs).float()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16 = selector(inputs).float()
    extra = torch.tensor([0.0, 1.0])
    for w in sorted({0.0, state["routing"]["cost_weight"]}):
        c32, c16 = selector_choice(fp32, extra, w), selector_choice(bf16, extra, w)
        acc = lambda c: correct.gather(1, c[:, None]).float().mean().item()
        print(f"{part} weight {w}: to googlenet fp32 {(c32 == 0).float().mean():.1%} bf16 {(c16 == 0).float().mean():.1%}; "
              f"differ {(c32 != c16).float().mean():.1%}; accuracy fp32 {acc(c32):.2%} bf16 {acc(c16):.2%}; "
              f"scores tied in bf16 {(bf16[:, 0] == bf16[:, 1]).float().mean():.1%}")
