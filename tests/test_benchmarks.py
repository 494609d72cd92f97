"""benchmarks/: routed speed figures (run.py), cascades from exported logits, thresholds chosen on val only
(route_from_logits.py), and the oracle's headroom between two runs of one recipe (headroom.py)."""
import json
import runpy
import shutil

import pytest
import torch

from conftest import ROOT, run_main
from distill.checkpoint import save_checkpoint
from distill.routing.experts import Expert

SCRIPT = ROOT / 'benchmarks' / 'route_from_logits.py'


def _export(folder, name, logits: dict, labels: dict):
    save_checkpoint({'arch': name, 'model': {}, **logits, 'labels': labels}, str(folder / f'{name}-logits.pt'))


def test_a_cascade_is_tuned_on_val_and_costed_from_the_measured_rates(tmp_path):
    # 'cheap' is sure and right on the first half of every split and unsure and wrong on the rest; 'big' is
    # right everywhere: the cascade must keep the first half at 'cheap' and pass the rest on.
    n, parts = 40, ('route', 'val', 'test')
    labels = {p: torch.zeros(n, dtype=torch.long) for p in parts}
    sure, unsure = torch.tensor([9.0, 0, 0]), torch.tensor([0.0, 0.5, 0])
    cheap = torch.cat([sure.expand(n // 2, 3), unsure.expand(n // 2, 3)])
    _export(tmp_path, 'cheap', {p: cheap.half() for p in parts}, labels)
    _export(tmp_path, 'big', {p: sure.expand(n, 3).half() for p in parts}, labels)
    _export(tmp_path, 'teacher', {p: sure.expand(n, 3).half() for p in parts}, labels)
    rates = tmp_path / 'rates.json'
    rates.write_text(json.dumps({'device': 'test', 'infer.cheap.img_s': 400.0, 'infer.big.img_s': 100.0,
                                 'infer.teacher.img_s': 50.0}))
    out = run_main(SCRIPT, tmp_path, '--rates', rates, '--chain', 'cheap', 'big', '--val-margin', '0').stdout
    row = next(line for line in out.splitlines() if line.startswith('| cheap → big'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[3:7] == ['100.00%', '100.00%', '100.00%', '+0.00 ± 0.00']  # val, test, big alone, lead over it
    # half the images cost 'cheap' alone, half 'cheap' then 'big': (1/400 + 0.5/100) / (1/100) = 0.75
    assert cells[7] == '0.75x' and cells[8] == '0.38x' and cells[9] == 'cheap 50%, big 50%'
    # a report without the teacher (evaluate.py where its weights are not there): no time against it
    rates.write_text(json.dumps({'infer.cheap.img_s': 400.0, 'infer.big.img_s': 100.0}))
    out = run_main(SCRIPT, tmp_path, '--rates', rates, '--chain', 'cheap', 'big', '--val-margin', '0').stdout
    row = next(line for line in out.splitlines() if line.startswith('| cheap → big'))
    assert [c.strip() for c in row.strip('|').split('|')][7:9] == ['0.75x', '—']


def test_a_cascade_tuned_on_route_and_val_sees_where_val_alone_misleads(tmp_path):
    # 'cheap' is 79% sure everywhere: right on every val image, wrong on half the route images. Val alone keeps
    # every image at 'cheap'; route and val together pass everything on to 'big', right everywhere.
    n, parts = 40, ('route', 'val', 'test')
    labels = {p: torch.zeros(n, dtype=torch.long) for p in parts}
    labels['route'][n // 2:] = 1
    cheap = torch.tensor([2.0, 0, 0]).expand(n, 3)
    _export(tmp_path, 'cheap', {p: cheap.half() for p in parts}, labels)
    for name in ('big', 'teacher'):
        _export(tmp_path, name, {p: 9 * torch.nn.functional.one_hot(labels[p], 3).half() for p in parts}, labels)
    rates = tmp_path / 'rates.json'
    rates.write_text(json.dumps({'infer.cheap.img_s': 400.0, 'infer.big.img_s': 100.0, 'infer.teacher.img_s': 50.0}))
    shares = {}
    for tune in (['val'], ['route', 'val']):
        out = run_main(SCRIPT, tmp_path, '--rates', rates, '--chain', 'cheap', 'big', '--val-margin', '0',
                       '--tune-on', *tune).stdout
        assert f"| thresholds ({' + '.join(tune)}) |" in out
        row = next(line for line in out.splitlines() if line.startswith('| cheap → big'))
        shares[tuple(tune)] = row.strip('|').split('|')[-1].strip()
    assert shares == {('val',): 'cheap 100%, big 0%', ('route', 'val'): 'cheap 0%, big 100%'}


def test_missing_or_unreadable_inputs_are_one_line(tmp_path):
    rates, shapes = tmp_path / 'rates.json', []
    rates.write_text('{}')
    for i, text in enumerate(('[1, 2]', '{"speed": [1]}', '{"speed": {"teacher": 5}}')):  # JSON, not a report
        shapes.append(tmp_path / f'shape{i}.json')
        shapes[-1].write_text(text)
    for bad_rates, message in ((rates, 'no logits'), (tmp_path / 'absent.json', 'cannot read --rates'),
                               (SCRIPT, 'cannot read --rates'), *((s, 'cannot read --rates') for s in shapes)):
        result = run_main(SCRIPT, tmp_path, '--rates', bad_rates, '--chain', 'cheap', 'big', check=False)
        err = result.stderr.strip()
        assert result.returncode == 2 and '\n' not in err and message in err


def _right_where(right) -> torch.Tensor:
    """Logits, label 0: right and sure where `right`, else wrong and less sure."""
    return torch.where(torch.tensor(right)[:, None], torch.tensor([5.0, 0, 0]), torch.tensor([0.0, 2, 0]))


def test_headroom_compares_the_pairs_oracle_with_two_runs_of_one_model(tmp_path):
    n, parts = 20, ('route', 'val', 'test')
    labels = {p: torch.zeros(n, dtype=torch.long) for p in parts}
    right = {  # the routed pair in run B: 'b' right on 80%, 'a' on 60%, some of it where 'b' is wrong
        ('B', 'a'): [i < 10 or i in (16, 17) for i in range(n)], ('B', 'b'): [i < 16 for i in range(n)],
        ('A', 'a'): [i < 12 for i in range(n)], ('A', 'b'): [i < 14 or i in (16, 17) for i in range(n)],
        ('A', 'teacher'): [i < 18 for i in range(n)], ('B', 'teacher'): [i < 18 for i in range(n)]}
    for (which, name), where in right.items():
        (tmp_path / which).mkdir(exist_ok=True)
        _export(tmp_path / which, name, {'split': {'seed': 0}, **{p: _right_where(where) for p in parts}}, labels)
    out = run_main(ROOT / 'benchmarks' / 'headroom.py', tmp_path / 'A', tmp_path / 'B', '--pair', 'a', 'b',
                   '--models', 'b', 'teacher').stdout
    rows = [[c.strip() for c in row.strip('|').split('|')] for row in out.splitlines()
            if row.startswith('| ') and '---' not in row and 'pair |' not in row]
    cells = {f'{row[0]}, {row[1]}': row for row in rows}
    # oracle over a and b: images 0-17, 10 points above b; exactly one right on 10-17; the sure one is right
    assert cells['a or b, test'][2:] == ['60.00% / 80.00%', '90.00%', '10.00 points', '40.00%', '100%']
    assert cells['b, run A or run B, test'][3:5] == ['90.00%', '10.00 points']  # b's two runs: the same headroom
    assert cells['teacher, run A or run B, val'][3:6] == ['90.00%', '0.00 points', '0.00%']
    assert 'two runs of b have 100% (val) and 100% (test)' in out and 'two runs of teacher have 0% (val)' in out
    assert "run A's copies was right closes 0% (val) and 0% (test)" in out  # in run A, 'a' never alone right
    _export(tmp_path / 'A', 'teacher', {'split': {'seed': 1}, 'test': _right_where(right['A', 'teacher'])}, labels)
    result = run_main(ROOT / 'benchmarks' / 'headroom.py', tmp_path / 'A', tmp_path / 'B', '--pair', 'a', 'b',
                      '--models', 'teacher', check=False)
    err = result.stderr.strip()
    assert result.returncode == 2 and '\n' not in err and "teacher were trained on different splits" in err


def test_another_runs_labels_capture_only_the_images_where_both_runs_agree():
    other_run_routing = runpy.run_path(str(ROOT / 'benchmarks' / 'headroom.py'))['other_run_routing']
    # run B: the better (column 1) right on 0-5, the weaker alone right on 6 and 7; run A's weaker was alone
    # right on 6 and 8: sending 6 gains, sending 8 loses nothing (both wrong in B) -> half the headroom
    correct_b = torch.tensor([[i < 3 or i in (6, 7), i < 6] for i in range(10)], dtype=torch.float)
    correct_a = torch.tensor([[i in (6, 8), i < 6] for i in range(10)], dtype=torch.float)
    assert other_run_routing(correct_a, correct_b) == pytest.approx(0.5)
    assert other_run_routing(correct_b, correct_b) == pytest.approx(1.0)  # the run's own labels: the oracle
    # sending an image the better one gets right costs headroom
    assert other_run_routing(torch.tensor([[1.0, 0.0]] * 10), correct_b) < 0


def test_exported_logits_feed_route_from_logits(tiny_runs, tmp_path, monkeypatch):
    work, _ = tiny_runs
    logits = tmp_path / 'logits'
    monkeypatch.chdir(work)
    run_main(ROOT / 'benchmarks' / 'export_logits.py', '--selector', 'checkpoints/selector', '--out', logits,
             '--device', 'cpu')
    written = {p.name for p in logits.iterdir()}
    assert {'teacher-logits.pt', 'googlenet-logits.pt', 'densenet121-logits.pt', 'googlenet-bf16.pt'} <= written
    # Without a selector (selectorTrain.py failed), the students and their teacher give the same files.
    run_main(ROOT / 'benchmarks' / 'export_logits.py', '--experts', 'checkpoints/googlenet', '--out',
             tmp_path / 'alone', '--device', 'cpu')
    assert {p.name for p in (tmp_path / 'alone').iterdir()} == {'googlenet-logits.pt', 'googlenet-bf16.pt',
                                                               'teacher-logits.pt', 'teacher-bf16.pt'} & written
    for name in ('googlenet', 'teacher'):
        alone, routed = (torch.load(d / f'{name}-logits.pt', weights_only=True) for d in (tmp_path / 'alone', logits))
        assert all(torch.equal(alone[part], routed[part]) for part in ('route', 'val', 'test'))
    # the rates as evaluate.py measured them, in the report every chain writes
    report = json.loads((work / 'results' / 'quick.json').read_text())
    out = run_main(SCRIPT, logits, '--rates', work / 'results' / 'quick.json', '--chain', 'googlenet', 'densenet121',
                   '--chain', 'googlenet', 'teacher').stdout
    assert '| googlenet → densenet121 |' in out and '| googlenet → teacher |' in out
    assert f"teacher {report['speed']['teacher']['images_per_s']:,.0f} img/s ({report['device']}" in out


def test_export_refuses_two_experts_of_one_name(tiny_runs, tmp_path):
    work, _ = tiny_runs
    twin = tmp_path / 'seed1' / 'googlenet'  # a second GoogLeNet run: its files would replace the first's
    shutil.copytree(work / 'checkpoints' / 'googlenet', twin)
    result = run_main(ROOT / 'benchmarks' / 'export_logits.py', '--experts', work / 'checkpoints' / 'googlenet',
                      twin, '--out', tmp_path / 'logits', '--device', 'cpu', check=False)
    assert result.returncode == 2 and 'both named' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'logits').exists()


def test_exported_weights_hold_what_inference_needs_in_bf16(tiny_runs, tmp_path, monkeypatch):
    work, _ = tiny_runs
    copy = tmp_path / 'copy'
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns('results'))
    teacher = copy / 'checkpoints' / 'teacher'
    shutil.copy(teacher / 'last.pt', teacher / 'best.pt')  # a best.pt made from a last.pt: optimiser and all
    monkeypatch.chdir(copy)
    run_main(ROOT / 'benchmarks' / 'export_logits.py', '--selector', 'checkpoints/selector', '--out',
             tmp_path / 'logits', '--device', 'cpu', '--max-mb', '64')
    exported = torch.load(tmp_path / 'logits' / 'teacher-bf16.pt', weights_only=True)
    assert 'optimizer' in torch.load(teacher / 'best.pt', weights_only=True)
    assert not {'optimizer', 'scheduler', 'rng', 'history'} & set(exported)
    assert {v.dtype for v in exported['model'].values() if v.is_floating_point()} == {torch.bfloat16}
    assert Expert(str(tmp_path / 'logits' / 'teacher-bf16.pt'), 'cpu').state['arch'] == 'resnet50'


def test_photos_decoded_at_reduced_scale_are_timed_against_whole_decoding(tmp_path):
    out = tmp_path / 'bench.json'
    run_main(ROOT / 'benchmarks' / 'run.py', '--quick', '--parts', 'decode', '--device', 'cpu', '--out', out)
    results = json.loads(out.read_text())
    assert results['decode.reduced_speedup'] == pytest.approx(
        results['decode.full_ms_per_photo'] / results['decode.reduced_ms_per_photo'])
    assert results['decode.photos'] == 2 and results['decode.max_abs_difference'] <= 2


def test_a_student_reading_the_logit_cache_is_timed_against_one_running_its_teacher():
    from benchmarks.run import fake_data
    from benchmarks.training_speed import kd_figures
    results = {}  # what `run.py --parts kd` adds, on 16 images of 8 px
    kd_figures(results, fake_data(16, size=8), 8, torch.device('cpu'), None)
    online, cached = results['kd.googlenet.online_img_s'], results['kd.googlenet.cached_img_s']
    assert online > 0 and cached > 0 and results['kd.cache_speedup'] == pytest.approx(cached / online, rel=0.02)


def test_an_output_that_cannot_be_written_is_refused_before_measuring(tmp_path):
    (tmp_path / 'file').write_text('')
    result = run_main(ROOT / 'benchmarks' / 'run.py', '--quick', '--parts', 'decode', '--out',
                      tmp_path / 'file' / 'out.json', check=False)
    assert result.returncode == 2 and 'cannot create the folder' in result.stderr


def test_where_auto_turned_bf16_down_the_inference_variants_time_it_beside_float32(tiny_runs, tmp_path, monkeypatch):
    import benchmarks.inference_speed as inference_speed
    import distill.runtime as runtime
    monkeypatch.setattr(inference_speed, 'cpu_has_native_bf16', lambda: True)  # bf16 units...
    monkeypatch.setattr(runtime, 'cpu_bf16_speedup', lambda: 0.6)  # ...slower than float32, so auto is float32
    work, _ = tiny_runs
    out = tmp_path / 'bench.json'
    run_main(ROOT / 'benchmarks' / 'run.py', '--quick', '--parts', 'infer', '--selector', 'checkpoints/selector',
             '--device', 'cpu', '--out', out, cwd=work)
    results = json.loads(out.read_text())
    assert results['precision'] == 'float32' and not any('precision_speedup' in key for key in results)
    for name in ('teacher', 'densenet121', 'googlenet'):
        assert results[f'infer.{name}.bf16_speedup'] == pytest.approx(results[f'infer.{name}.bf16_img_s'] /
                                                                      results[f'infer.{name}.img_s'])


@pytest.mark.parametrize('parts, variants', [('routed', False), ('infer', True)])
def test_run_reports_every_routing_mode_against_every_model_at_both_batches(tiny_runs, tmp_path, parts, variants):
    work, _ = tiny_runs
    out = tmp_path / 'bench.json'
    run_main(ROOT / 'benchmarks' / 'run.py', '--quick', '--parts', parts, '--selector', 'checkpoints/selector',
             '--device', 'cpu', '--out', out, cwd=work)
    results = json.loads(out.read_text())
    for mode in ('cascade', 'selector'):
        assert sum(results[f'infer.routed_{mode}.share']) == results['infer.images']
        for batch in ('', 'b256.'):
            for ref in ('teacher', 'googlenet', 'densenet121', 'all_students'):
                ratio = results[f'infer.{batch}routed_{mode}.vs_{ref}']
                assert ratio == pytest.approx(results[f'infer.{batch}routed_{mode}.img_s'] /
                                              results[f'infer.{batch}{ref}.img_s'])
        assert results[f'infer.latency_ms.routed_{mode}'] > 0
        stream = results[f'infer.routed_{mode}_stream.img_s']  # a folder as infer.py runs it, against calls of 256
        assert results[f'infer.routed_{mode}_stream.vs_densenet121'] == pytest.approx(
            stream / results['infer.b256.densenet121.img_s'])
    assert ('infer.googlenet.nchw_speedup' in results) == variants
    assert not any('eager' in key for key in results)  # no CUDA graphs on a CPU, so nothing to compare them with
    assert results['infer.b256.teacher.chunk_speedup'] == pytest.approx(  # cache-sized calls against one call
        results['infer.b256.teacher.img_s'] / results['infer.b256.teacher.whole_batch_img_s'])
