import pytest
import torch

import distill.cli as cli
from distill import UserError
from conftest import ROOT, run_script

CPU = torch.device('cpu')


@pytest.mark.parametrize('native', [True, False])
def test_auto_precision_on_cpu_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native):
    monkeypatch.setattr(cli, 'cpu_has_native_bf16', lambda: native)
    assert cli.amp_dtype('auto', CPU) == (torch.bfloat16 if native else None)
    assert cli.amp_dtype('bf16', CPU) == torch.bfloat16 and cli.amp_dtype('off', CPU) is None


def test_fp16_on_cpu_is_refused_in_one_line():
    with pytest.raises(UserError, match='--amp fp16 needs CUDA'):
        cli.amp_dtype('fp16', CPU)
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
