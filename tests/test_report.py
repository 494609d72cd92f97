"""distill/report.py: the mean ± std over seeds, and the line that says where the teacher alone beats routing."""
import pytest

from distill import UserError
from distill.report import aggregate, aggregate_markdown, ratio_text, seeds_of, setting_text, teacher_verdict

CONFIG = {'dataset': 'folder', 'epochs': 3, 'lr': 0.05, 'seed': 0, 'out': 'checkpoints/seed0/selector',
          'experts': ['checkpoints/seed0/densenet121/best.pt']}


def test_seeds_are_read_from_runs_that_differ_only_by_seed():
    other = {**CONFIG, 'seed': 3, 'out': 'checkpoints/seed3/selector', 'experts': ['checkpoints/seed3/x/best.pt']}
    assert seeds_of([CONFIG, other]) == [0, 3]


@pytest.mark.parametrize('change, message', [({'seed': 0}, 'share a seed'),
                                             ({'seed': 1, 'epochs': 4}, 'differ in epochs, not only the seed'),
                                             ({'seed': 1, 'cost_weight': 0.1}, 'differ in cost_weight')])
def test_runs_that_cannot_be_averaged_are_refused(change, message):
    with pytest.raises(UserError, match=message):
        seeds_of([CONFIG, {**CONFIG, **change}])


def _result(seed, teacher, routed, extra=None):
    accuracy = {'teacher': (teacher, 1e9), 'routed': (routed, 4e8 + seed * 1e8), **(extra or {})}
    return {'name': f'r-seed{seed}', 'seed': seed, 'dataset': 'folder', 'test_images': 10, 'accuracy': accuracy,
            'mode': 'cascade', 'share': {'cascade': {'a': 0.25 * (seed + 1), 'b': 1 - 0.25 * (seed + 1)},
                                         'selector': {'a': 1.0, 'b': 0.0}}}


def test_aggregate_gives_mean_and_sample_std_of_rows_every_seed_has():
    summary = aggregate('r', [_result(0, 0.5, 0.6, {'only here': (0.1, 1.0)}), _result(1, 0.7, 0.6)])
    assert summary['accuracy']['teacher']['mean'] == pytest.approx(0.6)
    assert summary['accuracy']['teacher']['std'] == pytest.approx(0.1414213, abs=1e-6)  # n - 1 in the denominator
    assert summary['accuracy']['routed'] == {'mean': 0.6, 'std': 0.0, 'per_seed': [0.6, 0.6], 'macs': 4.5e8}
    assert summary['share'] == {'a': 0.375, 'b': 0.625} and summary['left_out'] == ['only here']
    table = aggregate_markdown(summary)
    assert '| teacher | 60.00 ± 14.14% | 50.00% | 70.00% | 1000.0 |' in table and 'only here' in table


@pytest.mark.parametrize('teacher_acc, teacher_s, says', [(0.88, 1.0, True), (0.88, 2.0, False), (0.87, 1.0, False)])
def test_the_report_says_where_the_teacher_alone_beats_the_routing(teacher_acc, teacher_s, says):
    # routed as infer.py runs it (gathered): 88% in 1.5 s an image; the teacher must match both to replace it
    rows = {'teacher': {'accuracy': teacher_acc}, 'routed': {'accuracy': 0.88, 'mode': 'cascade'}}
    result = {'device': 'GPU X', 'rows': rows,
              'speed': {'teacher': {'seconds_per_image': teacher_s}, 'routed (cascade)': {'seconds_per_image': 1.2},
                        'routed (cascade), gathered': {'seconds_per_image': 1.5}}}
    lines = teacher_verdict(result)
    assert bool(lines) == says
    if says:
        assert 'On GPU X the teacher alone beats the cascade routing' in lines[1] and 'in 0.67x its time' in lines[1]


def test_a_measured_ratio_is_shown_with_its_range_over_the_timing_rounds():
    routed = {'seconds_per_image': 0.8, 'rounds_seconds_per_image': [0.8, 0.9, 0.85]}
    alone = {'seconds_per_image': 1.0, 'rounds_seconds_per_image': [1.0, 1.0, 0.95]}
    assert ratio_text(0.8, 1.0, routed, alone) == '0.80x (0.80-0.90)'
    assert ratio_text(0.8, 1.0, {'seconds_per_image': 0.8}, alone) == '0.80x'  # timed before rounds were kept
    assert ratio_text(1.0, 1.0, alone, alone) == '1.00x'  # the reference against itself has no range
    assert ratio_text(0.8, None) == '—' and ratio_text(float('nan'), 1.0) == '—'


def test_a_sweep_setting_is_shown_to_six_digits():
    assert setting_text(-0.018281977040863037) == '-0.018282' and setting_text(1e9) == '1e+09'
    assert setting_text([0.9, 0.95]) == '0.9, 0.95' and setting_text((0.5,)) == '0.5'


def test_a_full_disk_leaves_the_old_report_pair_not_a_new_json_beside_an_old_table(tmp_path, monkeypatch, capsys):
    import errno
    import io
    from distill import checkpoint
    from distill.report import write_report
    write_report(str(tmp_path), 'run', {'accuracy': 0.5}, 'old table\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, 'No space left on device')
    real_open = open
    monkeypatch.setattr(checkpoint, 'open', lambda name, mode, **kw: io.TextIOWrapper(FullDisk(name, 'w'), **kw)
                        if '.md' in name else real_open(name, mode, **kw), raising=False)
    with pytest.raises(UserError, match=r"could not write '.*run.md' \(No space left on device\)"):
        write_report(str(tmp_path), 'run', {'accuracy': 0.9}, 'new table\n')
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left either
    assert before.keys() == {'run.json', 'run.md'} and b'0.5' in before['run.json']
