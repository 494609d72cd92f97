"""The pipeline's presets and stages: skip a finished one, resume an interrupted one, retrain a changed one, and run
independent ones side by side.

Side by side pays where one model alone leaves the GPU idle between its kernels (DenseNet121's many
small layers): a second process fills those gaps. Where one model already keeps the GPU busy, processes
only share it (docs/gpu.md).
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from . import UserError
from .checkpoint import changed_settings

# Each preset: flags for every stage, the teacher's, the students' and the selector's epochs, and stage flags.
# The teacher gets more epochs than the students: a teacher weaker than the students' own labels makes
# KD cost accuracy (docs/results-cpu.md).
# smoke: minutes on a CPU; only checks that every step runs, students side by side too (gpu_check.sh --dry-run).
# quick: minutes on a 2-core CPU, to see every table and figure on real data. Not a recipe for accuracy.
# medium: about two hours on a 2-core CPU.
# fast: one GPU (docs/gpu.md): batch 512, lr 0.4, the whole training split, the four student runs at once.
# No label smoothing on the teacher: it makes a worse teacher for KD (Müller et al., 2019).
# full: the usual CIFAR recipe (SGD 0.1, Nesterov, wd 5e-4, cosine, batch 128, 200 epochs), as in
# kuangliu/pytorch-cifar and the RepDistiller baselines, so that numbers compare with published ones.
PRESETS = {
    'smoke': {'data': ['--subset', '600', '--test-subset', '200', '--image-size', '16'],
              'train': ['--batch-size', '64', '--lr', '0.05'], 'teacher_epochs': 2, 'epochs': 1, 'selector_epochs': 2,
              'jobs': 2},
    'quick': {'data': ['--subset', '1200', '--test-subset', '1000'], 'train': ['--batch-size', '64', '--lr', '0.05'],
              'teacher_epochs': 4, 'epochs': 3, 'selector_epochs': 10},
    'medium': {'data': ['--subset', '5000'], 'train': ['--batch-size', '64', '--lr', '0.05'],
               'teacher_epochs': 14, 'epochs': 10, 'selector_epochs': 15},
    'fast': {'data': [], 'train': ['--batch-size', '512', '--lr', '0.4'], 'teacher_epochs': 30, 'epochs': 15,
             'selector_epochs': 30, 'jobs': 4},
    'full': {'data': [], 'train': [], 'teacher_epochs': 200, 'epochs': 200, 'selector_epochs': 30},
}


def stage_argv(script, argv: list, force: bool) -> list | None:
    """The argv to run script with, or None when its OUT holds a finished run made with the same settings."""
    args = script.parse_args(argv + ['--overwrite'])  # its settings; whether it replaces a run is decided here
    summary, config_path = os.path.join(args.out, 'summary.json'), os.path.join(args.out, 'config.json')
    if os.path.exists(config_path) and not force:
        with open(config_path) as f:
            same = not changed_settings(json.load(f), vars(args))
        if same and os.path.exists(summary):
            print(f'skip {args.out}: finished with these settings')
            return None
        print(f"{'resume' if same else 'retrain (settings changed)'} {args.out}")
        return argv + (['--resume'] if same else ['--overwrite'])
    if os.path.exists(os.path.join(args.out, 'last.pt')):
        return argv + ['--overwrite']
    return argv


def run_stages(stages: list, force: bool, jobs: int = 1, log_dir: str = 'logs'):
    """stages: [(script module, argv)], independent of each other. jobs=1 runs them here, one after another;
    jobs>1 runs them as that many processes at once, each writing its output to LOG_DIR/<run>.log."""
    planned = [(script, argv) for script, argv in ((s, stage_argv(s, a, force)) for s, a in stages) if argv]
    if jobs <= 1 or len(planned) <= 1:
        for script, argv in planned:
            script.main(argv)
        return
    os.makedirs(log_dir, exist_ok=True)

    def run(stage):
        script, argv = stage
        out = script.parse_args(argv).out
        log = os.path.join(log_dir, os.path.basename(os.path.normpath(out)) + '.log')
        print(f'start {out} (output in {log})', flush=True)
        # The CPU's cores shared out, so that processes side by side do not each take them all.
        threads = os.environ.get('OMP_NUM_THREADS') or str(max(1, (os.cpu_count() or 1) // jobs))
        with open(log, 'w') as f:
            code = subprocess.run([sys.executable, script.__file__, *argv], stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': threads}).returncode
        with open(log) as f:
            last = ([line.strip() for line in f if line.strip()] or [''])[-1]
        print(f'{out}: {last}', flush=True)
        return code, out, log, last
    with ThreadPoolExecutor(jobs) as pool:
        failed = [(out, log, last) for code, out, log, last in pool.map(run, planned) if code]
    if failed:
        out, log, last = failed[0]
        raise UserError(f"stage '{out}' failed: {last.removeprefix('error: ')} (whole output in {log})")
