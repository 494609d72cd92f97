"""Export a trained system's outputs so that routing work can go on on a CPU with GPU-trained experts.

    python benchmarks/export_logits.py --selector checkpoints/selector --out results/logits
    python benchmarks/export_logits.py --experts checkpoints/densenet121 checkpoints/googlenet   # no selector yet
For the teacher and every expert: OUT/<name>-logits.pt, its fp16 logits on the route, val and test images
with their labels and the split, and OUT/<name>-bf16.pt, its checkpoint with bf16 weights (half the size;
it loads like any checkpoint). Each file stays well under 16 MiB for the CIFAR models but DenseNet121's
and ResNet50's weights; those are skipped above --max-mb.
"""
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distill.checkpoint import save_checkpoint  # noqa: E402
from distill.cli import Parser, check_range, check_writable, checkpoint_path, main_guard  # noqa: E402
from distill.data import prepare_data  # noqa: E402
from distill.loaders import split_loader  # noqa: E402
from distill.engine import predict_logits  # noqa: E402
from distill.routing.experts import (Expert, check_experts_distinct, load_experts, load_selector,  # noqa: E402
                                     selector_experts, teacher_of)
from distill.runtime import amp_dtype, resolve_device  # noqa: E402

RESUME_ONLY = ('optimizer', 'scheduler', 'scaler', 'history', 'rng')  # in last.pt, for --resume


@main_guard
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('--selector', default='checkpoints/selector', help='selector checkpoint or run directory')
    p.add_argument('--experts', nargs='+', help='student checkpoints or run directories, instead of a selector '
                                                '(where selectorTrain.py has not run, or failed)')
    p.add_argument('--out', default='results/logits', help='folder for the files')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--max-mb', type=float, default=16.0, help='largest weights file to write')
    args = p.parse_args()
    check_range('max_mb', args.max_mb, low=0)
    device = resolve_device(args.device)
    amp = amp_dtype('auto', device)
    if args.experts:
        experts = load_experts([checkpoint_path(path) for path in args.experts], device)
        config = experts[0].state['config']
    else:
        selector_path = checkpoint_path(args.selector)
        state = load_selector(selector_path)
        experts, config = selector_experts(state, selector_path, device), state['config']
    check_experts_distinct(experts)
    students = [e for e in experts if e.state.get('teacher')]
    models = {e.name: e for e in experts}
    if students and not any(e.state['arch'] == 'resnet50' for e in experts):
        models['teacher'] = Expert(teacher_of(students), device, experts[0].reference())
    data = prepare_data(SimpleNamespace(**config)).to(device)
    loaders = {part: split_loader(data, part, 512, device) for part in ('route', 'val', 'test')}
    check_writable(os.path.join(args.out, 'teacher-logits.pt'))
    for name, model in models.items():
        outputs = {part: predict_logits(model.model, loader, amp) for part, loader in loaders.items()}
        save_checkpoint({'arch': model.state['arch'], 'model': {}, 'split': data.split, 'class_names': data.classes,
                         **{part: logits.half().cpu() for part, (logits, _) in outputs.items()},
                         'labels': {part: labels.cpu() for part, (_, labels) in outputs.items()}},
                        os.path.join(args.out, f'{name}-logits.pt'))
        weights = {k: v.bfloat16() if v.is_floating_point() else v for k, v in model.state['model'].items()}
        size_mb = sum(v.numel() * v.element_size() for v in weights.values()) / 2 ** 20
        if size_mb <= args.max_mb:  # what inference needs: a best.pt made from a last.pt also holds the optimiser
            inference = {k: v for k, v in model.state.items() if k not in RESUME_ONLY}
            save_checkpoint({**inference, 'model': weights}, os.path.join(args.out, f'{name}-bf16.pt'))
        print(f"{name}: logits on {', '.join(f'{k} {len(v[1])}' for k, v in outputs.items())}"
              + ('' if size_mb <= args.max_mb else f'; weights {size_mb:.0f} MB > --max-mb, not written'))


if __name__ == '__main__':
    main()
