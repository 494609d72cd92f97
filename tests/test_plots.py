import pytest
import torch
from PIL import Image

from distill import plots
from distill.metrics import per_class_accuracy, share_per_class
from distill.routing.decisions import RANKING_REFERENCES


def test_a_figure_is_written_whole_as_a_png_with_no_temporary_left(tmp_path):
    path = plots.per_class_bars({'a': [0.5, None, 1.0]}, ['cat', 'dog', 'ship'], str(tmp_path / 'bars.png'), 'acc')
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ['bars.png']  # no temporary file left


@pytest.mark.parametrize('stacked', [False, True])
def test_a_class_with_no_test_images_is_named_so_not_drawn_as_zero(tmp_path, monkeypatch, stacked):
    drawn = []
    monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.append(fig) or path)
    labels, choice = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 1, 1, 1])  # no image of class 1, 'rare'
    values = (dict(zip('ab', share_per_class(choice, labels, 2, 3))) if stacked else
              {'a': per_class_accuracy(choice, labels, 3), 'b': [0.5, None, None]})
    plots.per_class_bars(values, ['cat', 'rare', 'ship'], str(tmp_path / 'bars.png'), 'acc', stacked=stacked)
    labels = [label.get_text() for label in drawn[0].axes[0].get_xticklabels()]
    assert labels == ['cat', 'rare\n(no images)', 'ship']  # cat's 0% is a score; rare has none


@pytest.mark.parametrize('stacked', [False, True])
def test_a_hundred_classes_are_drawn_at_a_readable_width_grouped_series_as_dots(tmp_path, monkeypatch, stacked):
    drawn = []
    monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.append(fig) or path)
    classes = [f'class {i}' for i in range(100)]  # CIFAR-100
    values = {name: [0.5] * 100 for name in ('teacher', 'densenet121', 'googlenet')}
    plots.per_class_bars(values, classes, str(tmp_path / 'bars.png'), 'acc', stacked=stacked)
    ax = drawn[0].axes[0]
    assert drawn[0].get_figwidth() <= 20 and len(ax.get_xticklabels()) == 100
    assert (len(ax.patches), len(ax.lines)) == ((300, 0) if stacked else (0, 3))


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


def test_the_selector_curve_draws_its_val_score_against_every_reference(tmp_path, monkeypatch):
    metrics = tmp_path / 'metrics.csv'
    metrics.write_text('epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,train_img_per_s\n'
                       '1,0.38,nan,0.29,0.8845,0.05,0.6,51204\n2,0.27,nan,0.28,0.8850,0.04,0.5,59383\n')
    drawn = {}
    monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.setdefault('fig', fig) and path)
    references = {'chance': 0.874, 'confidence': 0.8846, 'best possible': 0.9012}
    plots.selector_curve(str(metrics), references, str(tmp_path / 'curve.png'))
    score = drawn['fig'].axes[1]
    lines = {line.get_label(): line.get_ydata() for line in score.get_lines()}
    assert list(lines['selector']) == pytest.approx([88.45, 88.50])
    assert all(list(lines[RANKING_REFERENCES[name]]) == pytest.approx([100 * value] * 2)
               for name, value in references.items())
