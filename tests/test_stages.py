"""distill/stages.py: independent stages side by side, each in its own process, failures named in one line."""
import json
import os
import sys
import textwrap

import pytest

from distill import UserError
from distill.stages import run_stages

# A stand-in for a training script: parse_args + main, writes OUT/summary.json, fails on --fail.
SCRIPT = textwrap.dedent('''
    import argparse, json, os, sys
    def parse_args(argv=None):
        p = argparse.ArgumentParser()
        p.add_argument('--out'); p.add_argument('--fail', action='store_true')
        p.add_argument('--resume', action='store_true'); p.add_argument('--overwrite', action='store_true')
        return p.parse_args(argv)
    def main(argv=None):
        args = parse_args(argv)
        if args.fail:
            print('error: the loss became non-finite'); sys.exit(2)
        os.makedirs(args.out, exist_ok=True)
        json.dump({'pid': os.getpid(), 'threads': os.environ.get('OMP_NUM_THREADS')},
                  open(os.path.join(args.out, 'summary.json'), 'w'))
        json.dump({'out': args.out, 'fail': False}, open(os.path.join(args.out, 'config.json'), 'w'))
    if __name__ == '__main__':
        main()
''')


@pytest.fixture
def script(tmp_path, monkeypatch):
    (tmp_path / 'fake_stage.py').write_text(SCRIPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_stage
    yield fake_stage
    sys.modules.pop('fake_stage', None)


def test_side_by_side_stages_each_run_in_their_own_process(tmp_path, script, capsys, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    run_stages([(script, ['--out', str(tmp_path / name)]) for name in ('a', 'b', 'c')], force=False, jobs=2,
               log_dir=str(tmp_path / 'logs'))
    summaries = [json.loads((tmp_path / name / 'summary.json').read_text()) for name in ('a', 'b', 'c')]
    assert len({s['pid'] for s in summaries}) == 3 and os.getpid() not in {s['pid'] for s in summaries}
    # the cores shared out between the two processes at a time
    assert {s['threads'] for s in summaries} == {str(max(1, os.cpu_count() // 2))}
    assert sorted(p.name for p in (tmp_path / 'logs').iterdir()) == ['a.log', 'b.log', 'c.log']
    # finished with the same settings: a second call runs nothing
    capsys.readouterr()
    run_stages([(script, ['--out', str(tmp_path / name)]) for name in ('a', 'b')], force=False, jobs=2,
               log_dir=str(tmp_path / 'logs'))
    assert capsys.readouterr().out.count('skip ') == 2


def test_a_failed_side_by_side_stage_is_one_line_naming_it_and_its_log(tmp_path, script):
    stages = [(script, ['--out', str(tmp_path / 'good')]), (script, ['--out', str(tmp_path / 'bad'), '--fail'])]
    with pytest.raises(UserError) as error:
        run_stages(stages, force=False, jobs=2, log_dir=str(tmp_path / 'logs'))
    message = str(error.value)
    assert "'" + str(tmp_path / 'bad') + "' failed: the loss became non-finite" in message
    assert str(tmp_path / 'logs' / 'bad.log') in message and '\n' not in message
    assert (tmp_path / 'good' / 'summary.json').exists()  # the other stage still finished
