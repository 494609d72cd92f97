import pytest
import torch
from PIL import Image

from distill import plots


def test_a_figure_is_written_whole_as_a_png_with_no_temporary_left(tmp_path):
    path = plots.per_class_bars({'a': [0.5, None, 1.0]}, ['cat', 'dog', 'ship'], str(tmp_path / 'bars.png'), 'acc')
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ['bars.png']  # no temporary file left


def test_a_figure_that_fails_midway_leaves_the_old_one_whole(tmp_path, monkeypatch):
    path = tmp_path / 'confusion.png'
    path.write_bytes(b'the figure of the last run')

    def fails(self, f, **kwargs):
        if isinstance(f, str):  # matplotlib opens a path itself
            f = open(f, 'wb')
        f.write(b'half a png')
        f.flush()
        raise OSError('the disk went away')
    monkeypatch.setattr(plots.plt.Figure, 'savefig', fails)
    with pytest.raises(OSError):
        plots.confusion_matrices({'a': torch.eye(2, dtype=torch.long)}, ['x', 'y'], str(path))
    assert path.read_bytes() == b'the figure of the last run' and len(list(tmp_path.iterdir())) == 1
