"""pipeline.py: every stage once (conftest.tiny_runs), then skipped, resumed or retrained as its settings say."""
import os

import pipeline
import selectorTrain
from conftest import TINY, run_tiny_pipeline

STAGES = {'teacher', 'densenet121', 'densenet121-nokd', 'googlenet', 'googlenet-nokd', 'selector'}


def _mtimes(root):
    return {d: os.path.getmtime(root / d / 'best.pt') for d in STAGES}


def test_pipeline_runs_every_stage(tiny_runs):
    work, _ = tiny_runs
    assert all((work / 'checkpoints' / d / 'summary.json').exists() for d in STAGES)
    assert (work / 'results' / 'quick.md').exists() and (work / 'images' / 'quick' / 'accuracy_vs_macs.png').exists()
    assert len((work / 'results' / 'quick-predictions.csv').read_text().splitlines()) == 1 + 2 * 3


def test_a_second_run_trains_nothing(tiny_runs, capsys):
    work, folder = tiny_runs
    before = _mtimes(work / 'checkpoints')
    capsys.readouterr()
    run_tiny_pipeline(work, folder)
    assert _mtimes(work / 'checkpoints') == before
    assert capsys.readouterr().out.count('skip ') == len(STAGES)


def test_an_interrupted_stage_resumes_and_a_changed_one_retrains(tiny_runs, capsys, monkeypatch):
    work, folder = tiny_runs
    monkeypatch.chdir(work)
    def argv(epochs):  # what the pipeline passes the selector stage
        return TINY[:-4] + ['--data-dir', str(folder), '--lr', '0.05', '--epochs', str(epochs), '--out',
                            'checkpoints/selector', '--experts', 'checkpoints/densenet121/best.pt',
                            'checkpoints/googlenet/best.pt']
    os.remove('checkpoints/selector/summary.json')  # as if killed after its last epoch
    best = os.path.getmtime('checkpoints/selector/best.pt')
    pipeline.run_stage(selectorTrain, argv(2), force=False)
    out = capsys.readouterr().out
    assert 'resume checkpoints/selector' in out and 'resumed' in out and 'epoch 1/2' not in out
    assert os.path.getmtime('checkpoints/selector/best.pt') == best and os.path.exists('checkpoints/selector/summary.json')
    pipeline.run_stage(selectorTrain, argv(3), force=False)
    assert 'retrain (settings changed) checkpoints/selector' in capsys.readouterr().out
    assert os.path.getmtime('checkpoints/selector/best.pt') > best
