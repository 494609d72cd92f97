import contextlib
import io
import os
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg.tar.gz'
HEIC_START = b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic'  # the first box of an iPhone's photo
sys.path.insert(0, str(ROOT))
# Under pytest-xdist (-n 2, as CI runs) each worker takes one thread, so that the workers share the cores.
THREADS = 1 if os.environ.get('PYTEST_XDIST_WORKER') else min(2, os.cpu_count() or 1)
torch.set_num_threads(THREADS)

# Tests of the CUDA paths: skipped without a GPU; benchmarks/gpu_check.sh runs them (`pytest -m cuda`).
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'))


def needs_cuda(test):
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: a test of a CUDA path, run on a GPU by benchmarks/gpu_check.sh')


def make_image_folder(root: Path, classes=('cat', 'dog', 'ship'), train_per_class=12, test_per_class=4, size=8):
    """train/<class>/*.png and test/<class>/*.png; each class has its own mean colour so models can learn it."""
    rng = np.random.default_rng(0)
    for split, count in (('train', train_per_class), ('test', test_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 31 + 160) % 256])
                pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i:03d}.png')
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / 'dataset')


def write_cifar(root: Path, name='cifar10', n_train=50, n_test=20, num_classes=10):
    """The exact on-disk layout of torchvision's CIFAR10/CIFAR100 (python pickles), with md5 sums."""
    rng = np.random.default_rng(0)
    folder, label_key, meta_name, meta_key = (('cifar-10-batches-py', 'labels', 'batches.meta', 'label_names')
                                              if name == 'cifar10' else
                                              ('cifar-100-python', 'fine_labels', 'meta', 'fine_label_names'))
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)

    def batch(n):
        return {'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: [int(i % num_classes) for i in range(n)], 'filenames': [f'{i}.png' for i in range(n)]}
    files = (['data_batch_%d' % i for i in range(1, 6)] + ['test_batch']) if name == 'cifar10' else ['train', 'test']
    for f in files:
        with open(base / f, 'wb') as out:
            pickle.dump(batch(n_test if 'test' in f else n_train), out)
    with open(base / meta_name, 'wb') as out:
        pickle.dump({meta_key: [f'class{i}' for i in range(num_classes)]}, out)
    return base


def run_script(*args, cwd=None, check=True, threads=THREADS):
    """Run a top-level script as a user would; returns the CompletedProcess. threads: each process's, as this
    one's by default (a CPU's timings name its thread count), 1 for torchrun's ranks, which share the cores."""
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': str(threads)}
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd or os.getcwd(), env=env, capture_output=True,
                            text=True, errors='surrogateescape', timeout=600)  # output may hold non-UTF-8 names
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return result


def run_main(script, *args, cwd=None, check=True):
    """A script run in this process as `python script args` runs it, answered as run_script answers, without
    the seconds a new process spends importing torch. What only a real process shows (no traceback, bytes on
    standard output) stays with run_script."""
    streams = [io.TextIOWrapper(io.BytesIO(), encoding='utf-8', errors='surrogateescape', write_through=True)
               for _ in range(2)]  # real text streams: infer.py reconfigures its standard output
    argv, sys.argv, here = sys.argv, [str(script), *map(str, args)], os.getcwd()
    os.chdir(cwd or here)
    try:
        with contextlib.redirect_stdout(streams[0]), contextlib.redirect_stderr(streams[1]):
            runpy.run_path(str(script), run_name='__main__')
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.argv = argv
        os.chdir(here)
    out, err = (s.buffer.getvalue().decode('utf-8', 'surrogateescape') for s in streams)
    if check and code != 0:
        raise AssertionError(f'{args} failed ({code}):\n{out}\n{err}')
    return subprocess.CompletedProcess([script, *args], code, out, err)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Scripts write data/cache and checkpoints/ relative to the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


TINY = ['--dataset', 'folder', '--image-size', '8', '--val-size', '6', '--route-size', '9', '--batch-size', '8',
        '--epochs', '1', '--lr', '0.05']
TINY_PRESET = {'data': TINY[2:8], 'train': TINY[8:10] + ['--lr', '0.05'], 'teacher_epochs': 1, 'epochs': 1,
               'selector_epochs': 2}


def run_tiny_pipeline(work: Path, folder: Path, *flags):
    """pipeline.py in-process with a tiny preset, run from `work` (as a user runs it from the repo)."""
    import pipeline
    saved, cwd = dict(pipeline.PRESETS['quick']), os.getcwd()
    pipeline.PRESETS['quick'] = TINY_PRESET
    os.chdir(work)
    try:
        pipeline.main(['--data-dir', str(folder), '--dataset', 'folder', *flags])
    finally:
        pipeline.PRESETS['quick'] = saved
        os.chdir(cwd)


@pytest.fixture(scope='session')
def tiny_runs(tmp_path_factory):
    """teacher -> two students and their no-KD baselines -> selector -> evaluate -> infer, on a tiny folder.

    Returns (work dir, data folder). Tests may add runs but must leave these usable."""
    work = tmp_path_factory.mktemp('runs')
    folder = make_image_folder(work / 'dataset')
    run_tiny_pipeline(work, folder)
    return work, folder
