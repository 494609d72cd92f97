"""The H200's teacher as the last resort on this CPU, modelled: its weights were never brought back (47 MB), but
its logits were, and its time per image depends on its architecture, not its weights. So a ResNet50 built as
the teacher was, with untrained weights, is timed here in turns with the two H200 students (loaded and run as
infer.py runs experts, in calls of 256), and the rates go to benchmarks/route_from_logits.py with the logits.

    PYTHONPATH=. python docs/runs/cpu-h200-students/teacher_stand_in.py results/h200d-cpu/stand-in-rates.json
    python benchmarks/route_from_logits.py results/h200d/gpu-check/logits \
        --rates results/h200d-cpu/stand-in-rates.json --tune-on route val \
        --chain googlenet teacher --chain googlenet densenet121 --chain googlenet densenet121 teacher
"""
import sys
import tempfile

import torch

from distill.checkpoint import save_checkpoint, write_json
from distill.metrics import round_ratios, time_in_turns
from distill.routing.experts import Expert, load_experts
from distill.runtime import amp_dtype, device_name, precision_name
from models import build_model


def stand_in_teacher(expert: Expert, device) -> Expert:
    """A ResNet50 built as the teacher was, for expert's data, with untrained weights: an Expert like any other."""
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        save_checkpoint({**expert.state, 'arch': 'resnet50', 'model': build_model('resnet50', 10).state_dict()},
                        f'{folder}/teacher/best.pt')
        return Expert(f'{folder}/teacher/best.pt', device, expert.reference())


def print_against_teacher(timed: dict, teacher: str):
    """Each time_in_turns entry as img/s and a ratio to the teacher's time, with its range over the rounds."""
    for name, t in timed.items():
        ratios, ratio = round_ratios(t, timed[teacher]), t['seconds_per_image'] / timed[teacher]['seconds_per_image']
        print(f"{name}: {t['images_per_s']:,.0f} img/s, {ratio:.2f}x the teacher's time "
              f"({min(ratios):.2f}-{max(ratios):.2f} over the rounds)")


if __name__ == '__main__':
    from h200_run import require  # beside this script
    require('checkpoints/h200d/densenet121/best.pt', 'checkpoints/h200d/googlenet/best.pt')
    if len(sys.argv) != 2:
        sys.exit('usage: teacher_stand_in.py RATES.json (where the models\' img/s go)')
    device = torch.device('cpu')
    amp = amp_dtype('auto', device)
    students = load_experts(['checkpoints/h200d/densenet121/best.pt', 'checkpoints/h200d/googlenet/best.pt'], device)
    experts = students + [stand_in_teacher(students[0], device)]
    images = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last)  # time depends on shape only
    timed = time_in_turns({e.name: e for e in experts}, images, amp, latency=False)
    print_against_teacher(timed, 'teacher')
    write_json(sys.argv[1], {'device': device_name(device), 'precision': precision_name(amp),
                             'speed': {name: {'images_per_s': t['images_per_s']} for name, t in timed.items()}})
