import argparse
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import distill.cli as cli
from distill import UserError
from distill.engine import TrainSettings
from conftest import ROOT, run_script


def test_fp16_on_cpu_is_refused_in_one_line():
    result = run_script(ROOT / 'teacherTrain.py', '--amp', 'fp16', '--device', 'cpu', check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        'error: --amp fp16 needs CUDA; on CPU use --amp bf16 or --amp off']


def test_a_multi_line_error_is_printed_as_one_line(capsys):
    @cli.main_guard
    def main():
        raise UserError("'x.tar.gz' is not readable (could not open:\n- method gz: bad\n- method xz: bad)")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: 'x.tar.gz' is not readable "
                                       "(could not open: - method gz: bad - method xz: bad)\n")


@pytest.mark.parametrize('raised, says', [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 36864000000 bytes. Error code 12 (Cannot allocate memory)"),
     'tried to allocate 34.3 GiB'),
    (torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB'),
     'tried to allocate 2.00 GiB'),
    (torch.OutOfMemoryError('CUDA out of memory.'), 'OutOfMemoryError'),  # no size in the message
    (MemoryError(), 'MemoryError')])
def test_running_out_of_memory_is_one_line_that_says_what_to_shrink(capsys, raised, says):
    @cli.main_guard
    def main():
        raise raised  # --image-size 2000 on this CPU was a traceback through the convolutions
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        f'error: out of memory ({says}); pass a smaller --batch-size, or a smaller --image-size where the stage has '
        f'one\n')


def test_other_runtime_errors_are_not_taken_for_memory():
    @cli.main_guard
    def main():
        raise RuntimeError('shape mismatch')
    with pytest.raises(RuntimeError, match='shape mismatch'):
        main()


def test_compile_without_a_cpp_compiler_is_one_line(capsys):
    @cli.main_guard
    def main():  # what torch.compile raised at the first batch with CXX naming no compiler (torch 2.14)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: "
                           "(None, '/nonexistent/g++')")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        'error: --compile found no working C++ compiler, which torch.compile builds its kernels with; install g++ '
        '(or name another in CXX), or run without --compile\n')


def test_a_reader_that_stops_reading_ends_the_script_quietly():
    # python infer.py pictures/ --out - | head: the table's reader quits after a few lines
    script = 'from distill.cli import main_guard\nmain_guard(lambda: [print(i) for i in range(10 ** 6)])()'
    writer = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout.readline() == b'0\n'
    writer.stdout.close()
    with writer.stderr:
        assert writer.stderr.read() == b'' and writer.wait(timeout=60) == 141


def test_sigterm_stops_a_script_like_ctrl_c(capsys):
    def not_handled(signum, frame):  # in place of the default, which would end the test session itself
        raise RuntimeError('main_guard left SIGTERM to its default: the run died mid-write with no message')

    @cli.main_guard
    def main():
        os.kill(os.getpid(), signal.SIGTERM)  # kill, timeout, or a cluster's scheduler taking the node back
        time.sleep(10)
    before = signal.signal(signal.SIGTERM, not_handled)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert signal.getsignal(signal.SIGTERM) is not_handled  # restored when the script ends
    finally:
        signal.signal(signal.SIGTERM, before)
    assert exit_info.value.code == 130 and capsys.readouterr().err.startswith('interrupted; no output was left')


@pytest.mark.parametrize('flags, message', [
    (['--momentum', '-1'], '--momentum must be between 0 and 1 (got -1.0)'),  # SGD raised a traceback
    (['--weight-decay', '-0.1'], '--weight-decay must be at least 0'),
    (['--warmup-epochs', '-1'], '--warmup-epochs must be at least 0'),
    (['--lr', 'nan'], '--lr must be a finite number (got nan)'),  # nan passes every comparison
    (['--lr', '0'], '--lr must be positive'),
    (['--label-smoothing', 'inf'], '--label-smoothing must be a finite number (got inf)'),
    (['--label-smoothing', '1'], '--label-smoothing 1 makes every target uniform'),  # trained to chance
    (['--seed', str(2 ** 64)], '--seed must be between 0 and 4294967295'),  # overflowed in torch: a traceback
    (['--route-size', '-1'], '--route-size must be at least 0 (got -1)'),
    (['--batch-size', '1'], '--batch-size must be at least 2 (got 1)'),  # the selector's BatchNorm: a traceback
    (['--arch', 'googlenet', '--image-size', '2'], '--image-size 2 is too small for googlenet, whose pooling needs '
                                                   'at least 4 px; pass --image-size 4'),  # a traceback in batch 1
    (['--arch', 'densenet121', '--image-size', '7'], 'at least 8 px'),
    (['--arch', 'densenet121', '--stem-stride', '4', '--image-size', '16'],
     '--image-size 16 is too small for densenet121 and stem stride 4, whose pooling needs at least 29 px; pass '
     '--stem-stride 2, or --image-size 29 or more')])
def test_run_settings_that_cannot_train_are_refused_before_anything_loads(flags, message):
    import teacherTrain
    with pytest.raises(UserError, match=re.escape(message)):
        cli.classifier_args(teacherTrain.parse_args(['--device', 'cpu', *flags]))  # main's first two steps


def test_a_global_batch_too_small_for_its_torchrun_processes_or_uneven_over_them_is_refused(monkeypatch):
    import teacherTrain
    monkeypatch.setenv('WORLD_SIZE', '4')  # as torchrun --nproc_per_node=4 sets it
    with pytest.raises(UserError, match=re.escape('--batch-size must be at least 8 (got 6)')):
        teacherTrain.parse_args(['--device', 'cpu', '--batch-size', '6'])
    with pytest.raises(UserError, match=re.escape('--batch-size 10 must divide evenly over the 4 processes')):
        teacherTrain.parse_args(['--device', 'cpu', '--batch-size', '10'])
    assert teacherTrain.parse_args(['--device', 'cpu', '--batch-size', '8']).batch_size == 8


@pytest.mark.parametrize('inherits', [None, 'the teacher'])
def test_a_data_or_seed_flag_shows_one_default_in_help(inherits, capsys):
    with pytest.raises(SystemExit):
        cli.training_parser('x', out='o', epochs=1, lr=0.1, inherits=inherits).parse_args(['--help'])
    options = re.split(r'\n  (?=-)', capsys.readouterr().out)
    for flag in ('--subset', '--image-size', '--val-size', '--seed'):
        text = ' '.join(next(o for o in options if o.startswith(flag)).split())
        assert text.count('(default:') == 1 and ('as the teacher was trained' in text) == bool(inherits), text


def test_data_settings_left_out_are_inherited_and_a_conflict_names_the_setting():
    parser = cli.training_parser('x', out='o', epochs=1, lr=0.1, inherits='the teacher')
    config = {'dataset': 'folder', 'data_dir': 'd.tar.gz', 'subset': 300, 'seed': 2, 'image_size': 16,
              'val_size': None, 'route_size': None, 'test_subset': None}
    args = cli.inherit_data_settings(parser.parse_args([]), [], config, 't.pt')
    assert (args.dataset, args.data_dir, args.subset, args.seed, args.image_size) == ('folder', 'd.tar.gz', 300, 2, 16)
    argv = ['--data-dir', 'moved.tar.gz']  # where the data is may change
    assert cli.inherit_data_settings(parser.parse_args(argv), argv, config, 't.pt').data_dir == 'moved.tar.gz'
    argv = ['--subset', '400']
    with pytest.raises(UserError, match="--subset 400 differs from 't.pt', trained with --subset 300;"):
        cli.inherit_data_settings(parser.parse_args(argv), argv, config, 't.pt')
    argv = ['--val-size', '50']
    with pytest.raises(UserError, match="--val-size 50 differs from 't.pt', trained with --val-size left at its def"):
        cli.inherit_data_settings(parser.parse_args(argv), argv, config, 't.pt')
    with pytest.raises(SystemExit):  # an abbreviation would slip past the check above: refused
        parser.parse_args(['--sub', '400'])


@pytest.mark.parametrize('script', ['teacherTrain', 'studentTrain', 'selectorTrain', 'infer', 'evaluate', 'pipeline'])
def test_every_flag_has_help_that_shows_its_real_default(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.parse_args(['--help'] if script != 'infer' else ['x', '--help'])
    text = capsys.readouterr().out
    assert '(default: None)' not in text and text.count('(default:') >= 2
    parser_actions = [a for a in _parser_of(module)._actions if a.option_strings and a.dest != 'help']
    assert all(a.help for a in parser_actions), [a.dest for a in parser_actions if not a.help]


def _parser_of(module):
    """The parser a script builds, caught as it parses."""
    caught = {}
    real = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):
        caught['parser'] = self
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = catch
    try:
        module.parse_args(['x'] if module.__name__ == 'infer' else [])
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return caught['parser']


def test_label_smoothing_reaches_the_student_loss_and_is_not_offered_to_the_selector():
    import selectorTrain
    with pytest.raises(SystemExit):
        selectorTrain.parse_args(['--label-smoothing', '0.1'])
    assert cli.training_parser('x', out='o', epochs=1, lr=0.1).parse_args(['--label-smoothing', '0.1']).label_smoothing


def test_the_loop_takes_its_settings_from_the_flags_and_records_every_flag():
    args = cli.training_parser('x', out='o', epochs=3, lr=0.2).parse_args(['--label-smoothing', '0.1', '--amp', 'off'])
    settings = cli.train_settings(args)
    assert (settings.out, settings.epochs, settings.lr, settings.amp) == ('o', 3, 0.2, 'off')
    assert settings.config() == vars(args)  # label smoothing too: a resume must match it, a later stage inherit it
    assert 'label_smoothing' not in TrainSettings(out='o', epochs=1, batch_size=2, lr=0.1).config()


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('')
    cases = [(a_file / 'out.json', 'cannot create the folder'), (tmp_path, 'is a folder, not a file name'),
             (f'{tmp_path}/new/', 'is a folder, not a file name')]  # a folder that does not exist yet
    if os.path.isdir('/proc'):  # accepts os.access for root, refuses every new file
        cases.append(('/proc/out.json', "cannot write to '/proc'"))
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            cli.check_writable(str(path))
    cli.check_writable(str(tmp_path / 'new' / 'out.json'))  # creates nothing
    assert os.listdir(tmp_path) == ['file']


def test_a_training_run_whose_out_cannot_be_written_is_refused_before_any_data(tmp_path):
    import teacherTrain
    (tmp_path / 'file').write_text('')
    with pytest.raises(UserError, match="cannot create the folder '.*file'"):
        teacherTrain.parse_args(['--dataset', 'folder', '--data-dir', str(tmp_path / 'no-data'),
                                 '--out', str(tmp_path / 'file')])


@pytest.mark.parametrize('script', ['teacherTrain', 'studentTrain', 'selectorTrain'])
@pytest.mark.parametrize('present, message', [('last.pt', 'already holds a run; pass --resume'),
                                              ('best.pt', 'exists, with no last.pt to resume from'),
                                              ('summary.json', 'exists but no run does')])  # a user's own file
def test_a_run_that_would_replace_another_is_refused_before_any_data(tmp_path, script, present, message):
    # selectorTrain found out after timing its experts and classifying every held-out image.
    (tmp_path / present).write_text('')
    with pytest.raises(UserError, match=message):
        __import__(script).parse_args(['--out', str(tmp_path)])
    assert __import__(script).parse_args(['--out', str(tmp_path), '--overwrite']).overwrite


def test_a_logit_cache_that_cannot_be_written_is_refused_before_the_teacher_runs(tmp_path):
    import studentTrain
    (tmp_path / 'file').write_text('')  # it failed with a traceback after the teacher's first pass
    with pytest.raises(UserError, match="cannot create the folder '.*file/cache'"):
        studentTrain.parse_args(['--teacher-logits', 'cache', '--cache-dir', str(tmp_path / 'file' / 'cache'),
                                 '--out', str(tmp_path / 'run')])
