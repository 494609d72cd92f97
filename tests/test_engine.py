import csv
import json
import subprocess
import sys

import pytest
import torch

import distill.engine as engine
import teacherTrain
from distill.checkpoint import one_run_writing
from distill.engine import WarmupCosine
from distill.runtime import device_name, fuse_for_inference
from conftest import ROOT, make_image_folder


def _tiny_run(folder, out, *extra):
    return ['--dataset', 'folder', '--data-dir', str(folder), '--image-size', '8', '--val-size', '6',
            '--route-size', '6', '--batch-size', '8', '--lr', '0.05', '--arch', 'googlenet', '--out', str(out), *extra]


def _rows(out):
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert all(float(row['train_img_per_s']) > 0 for row in rows)
    return [{k: v for k, v in row.items() if k not in ('seconds', 'train_img_per_s')} for row in rows]


def test_schedule_warms_up_then_decays_to_zero():
    schedule = WarmupCosine(total_steps=100, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5) and schedule(100) == pytest.approx(0.0)


def test_a_model_fx_cannot_trace_is_run_unfused_in_eval_mode():
    class DataDependent(torch.nn.Module):  # control flow on tensor values: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x
    model = DataDependent().train()
    fused = fuse_for_inference(model)
    assert fused is model and not model.training


def test_resume_after_a_kill_ends_with_the_same_metrics(image_folder, tmp_path, monkeypatch):
    teacherTrain.main(_tiny_run(image_folder, tmp_path / 'straight', '--epochs', '3'))

    real_train = engine.train_one_epoch
    calls = []

    def killed_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)
    monkeypatch.setattr(engine, 'train_one_epoch', killed_in_second_epoch)
    with pytest.raises(SystemExit) as exit_info:
        teacherTrain.main(_tiny_run(image_folder, tmp_path / 'resumed', '--epochs', '3'))
    assert exit_info.value.code == 130
    assert len(_rows(tmp_path / 'resumed')) == 1
    monkeypatch.setattr(engine, 'train_one_epoch', real_train)
    teacherTrain.main(_tiny_run(image_folder, tmp_path / 'resumed', '--epochs', '3', '--resume'))

    assert _rows(tmp_path / 'resumed') == _rows(tmp_path / 'straight')
    straight = torch.load(tmp_path / 'straight' / 'last.pt', weights_only=True)['model']
    resumed = torch.load(tmp_path / 'resumed' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    summaries = [json.loads((tmp_path / d / 'summary.json').read_text()) for d in ('straight', 'resumed')]
    assert summaries[0]['test_acc'] == summaries[1]['test_acc']
    assert set(summaries[0]) >= {'best_val_acc', 'test_acc', 'epochs', 'params', 'macs'}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A one-epoch run that the tests below try to damage; each checks that it survives."""
    work = tmp_path_factory.mktemp('run')
    folder = make_image_folder(work / 'dataset')
    # set up before _work_in_tmp moves each test out of the repo: its decoded folder goes under work, not data/
    teacherTrain.main(_tiny_run(folder, work / 'run', '--epochs', '1', '--data-cache', str(work / 'cache')))
    return folder, work / 'run'


def test_a_nan_loss_stops_with_a_clear_line_and_keeps_last_pt(finished_run, monkeypatch, capsys):
    folder, run = finished_run
    last = (run / 'last.pt').read_bytes()
    monkeypatch.setattr(teacherTrain, 'classification_step',
                        lambda model, smoothing: lambda x, y, i: (model(x).sum() * float('nan'), model(x)))
    with pytest.raises(SystemExit) as exit_info:
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '1', '--overwrite'))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'the loss became non-finite' in err[0] and 'lower --lr' in err[0]
    assert f"'{run / 'last.pt'}' is left as it was" in err[0]
    assert (run / 'last.pt').read_bytes() == last
    with pytest.raises(SystemExit):  # a run that never finished an epoch wrote nothing, and says so
        teacherTrain.main(_tiny_run(folder, run.parent / 'diverged', '--epochs', '1'))
    assert capsys.readouterr().err.strip().endswith('nothing was written')
    assert not (run.parent / 'diverged').exists()


def test_weights_diverged_by_an_epochs_last_steps_stop_the_run_at_val_and_keep_last_pt(finished_run, monkeypatch,
                                                                                         capsys):
    folder, run = finished_run
    last, real_train = (run / 'last.pt').read_bytes(), engine.train_one_epoch

    def train_then_diverge(model, *args, **kwargs):  # the epoch's own losses were finite
        result = real_train(model, *args, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float('inf'))
        return result
    monkeypatch.setattr(engine, 'train_one_epoch', train_then_diverge)
    with pytest.raises(SystemExit) as exit_info:
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '1', '--overwrite'))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert 'the val loss became non-finite (nan or inf) after epoch 1' in err[0] and 'lower --lr' in err[0]
    assert err[0].endswith(f"'{run / 'last.pt'}' is left as it was") and (run / 'last.pt').read_bytes() == last


def test_a_nan_loss_stops_the_epoch_within_the_check_interval_without_a_sync_per_step(monkeypatch):
    from distill.data import ImageSet
    from distill.loaders import Loader
    data = ImageSet(torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8), torch.arange(40) % 2, ['a', 'b'])
    loader = Loader(data, torch.arange(40), 2, [0.5] * 3, [0.25] * 3, train=True)  # 20 steps
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    monkeypatch.setattr(engine, 'FINITE_CHECK_EVERY', 4)
    steps, host_reads = [], []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, 'item', lambda self: host_reads.append(len(steps)) or real_item(self))

    def step(x, y, i):
        steps.append(1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return (loss * float('nan') if len(steps) == 6 else loss), None
    with pytest.raises(engine.UserError, match='non-finite .* by batch 8'):
        engine.train_one_epoch(model, loader, optimizer, scheduler, step)
    assert len(steps) == 8 and host_reads == [4, 8]  # one look every 4 steps, and the run stops at the next


def test_an_existing_run_is_never_overwritten_by_accident(finished_run, capsys):
    folder, run = finished_run
    best = (run / 'best.pt').read_bytes()
    with pytest.raises(SystemExit):
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '1'))
    assert 'already holds a run' in capsys.readouterr().err
    assert (run / 'best.pt').read_bytes() == best


def test_a_second_run_into_an_out_another_process_writes_ends_in_one_line_and_writes_nothing(finished_run, tmp_path,
                                                                                              capsys):
    folder, _ = finished_run
    out = tmp_path / 'busy'
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time\nfrom distill.checkpoint import one_run_writing\n'
                               'with one_run_writing(sys.argv[1]):\n    print("held", flush=True)\n    time.sleep(120)',
                               str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        for flags in ([], ['--overwrite'], ['--resume']):
            with pytest.raises(SystemExit):
                teacherTrain.main(_tiny_run(folder, out, '--epochs', '1', *flags))
            assert capsys.readouterr().err.endswith(f"error: another run (process {holder.pid}) is writing to '{out}'; "
                                                    f"wait for it to end, or pass another --out\n")
        assert not out.exists()
        with one_run_writing(str(out), rank=1):  # torchrun's other processes: rank 0 holds it for them
            pass
    finally:
        holder.kill()
        holder.communicate()  # waits, and closes its output
    teacherTrain.main(_tiny_run(folder, out, '--epochs', '1'))  # the OS dropped the lock with its process
    assert (out / 'best.pt').exists()


def test_weights_alone_in_out_are_not_replaced_without_overwrite(finished_run, tmp_path, capsys):
    folder, run = finished_run  # a best.pt and nothing else: weights copied from a GPU run, say
    (tmp_path / 'weights').mkdir()
    best = tmp_path / 'weights' / 'best.pt'
    best.write_bytes((run / 'best.pt').read_bytes())
    for flags in ([], ['--resume']):  # nothing to resume from: starting afresh would replace them
        with pytest.raises(SystemExit):
            teacherTrain.main(_tiny_run(folder, tmp_path / 'weights', '--epochs', '1', *flags))
        assert 'exists, with no last.pt to resume from; pass --overwrite' in capsys.readouterr().err
    assert best.read_bytes() == (run / 'best.pt').read_bytes()


def test_resuming_with_another_split_is_refused(finished_run, capsys):
    folder, run = finished_run
    with pytest.raises(SystemExit):
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '2', '--resume', '--seed', '9'))
    assert "has split=" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused_in_one_line(finished_run, capsys):
    folder, run = finished_run
    last = (run / 'last.pt').read_bytes()
    with pytest.raises(SystemExit) as exit_info:  # the restored cosine schedule would end at epoch 1: lr 0 after
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '3', '--resume', '--lr', '0.1'))
    assert exit_info.value.code == 2 and (run / 'last.pt').read_bytes() == last
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--epochs 1 (now 3), --lr 0.05 (now 0.1)' in err[0] and '--overwrite' in err[0]
    teacherTrain.main(_tiny_run(folder, run, '--epochs', '1', '--resume', '--amp', 'off'))  # precision may change
    header, resumed = capsys.readouterr().out.splitlines()[:2]
    assert resumed.startswith('resumed')
    assert header == (f'googlenet: 24 training, 6 val and 12 test images of 3 classes at 8 px; 1 epoch of 3 steps on '
                      f"{device_name(torch.device('cpu'))} in float32 -> {run}")


def test_bf16_autocast_on_cpu_runs_the_convolutions_in_bf16_and_keeps_float32_weights():
    from distill.data import ImageSet
    from distill.loaders import Loader
    from distill.losses import classification_step
    data = ImageSet(torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8), torch.arange(16) % 2, ['a', 'b'])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    conv_outputs = []
    model[0].register_forward_hook(lambda module, inputs, output: conv_outputs.append(output.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = model[0].weight.detach().clone()
    loader = Loader(data, torch.arange(16), 8, [0.5] * 3, [0.25] * 3, train=True)
    loss, _ = engine.train_one_epoch(model, loader, optimizer, scheduler, classification_step(model),
                                     amp=torch.bfloat16)
    assert conv_outputs == [torch.bfloat16] * 2 and model[0].weight.dtype == torch.float32
    assert loss == loss and not torch.equal(model[0].weight, before)


def test_resuming_a_run_whose_stem_differs_is_refused(finished_run, capsys):
    """A run saved before the stem stride existed was built with the 32-px stem; a stem's pool has no weights,
    so its last.pt would load into another stem without a word."""
    folder, run = finished_run
    saved = (run / 'last.pt').read_bytes()
    last = torch.load(run / 'last.pt', weights_only=True)
    assert last['model_args'] == {'stem_stride': 1} and last['config']['stem_stride'] == 1  # chosen for 8 px
    del last['model_args'], last['config']['stem_stride']
    try:
        torch.save(last, run / 'last.pt')
        with pytest.raises(SystemExit) as exit_info:
            teacherTrain.main(_tiny_run(folder, run, '--epochs', '1', '--resume', '--stem-stride', '2'))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].endswith(
            "last.pt' holds a model built with --stem-stride 1 (now 2); resume with --stem-stride 1, or start "
            "afresh with --overwrite or another --out")
        teacherTrain.main(_tiny_run(folder, run, '--epochs', '1', '--resume'))  # 8 px: the stem it was built with
        assert capsys.readouterr().out.splitlines()[1].startswith('resumed')
    finally:
        (run / 'last.pt').write_bytes(saved)


def test_a_run_on_larger_pictures_stores_the_stem_chosen_for_them_and_is_rebuilt_with_it(image_folder, tmp_path):
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    teacherTrain.main(_tiny_run(image_folder, tmp_path / 'run', '--epochs', '1', '--image-size', '64'))
    best = load_checkpoint(str(tmp_path / 'run' / 'best.pt'))
    assert best['model_args'] == {'stem_stride': 2} and best['config']['stem_stride'] == 2
    model = model_from_checkpoint(best)
    assert isinstance(model.maxpool1, torch.nn.MaxPool2d) and model.conv1.conv.stride == (1, 1)
    summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    from distill.metrics import count_macs
    from models import build_model
    assert summary['macs'] == count_macs(model, 64) < count_macs(build_model('googlenet', 3), 64) / 3
