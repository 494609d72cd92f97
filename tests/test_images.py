import io
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import distill.images
from distill import UserError
from distill.images import list_image_files, read_image, read_images, to_rgb
from conftest import HEIC_START


@pytest.mark.parametrize('mode, pixels, grey', [
    ('F', [[0.0, 0.5, 1.0]], [0, 128, 255]),  # a float image of 0..1, as scientific TIFFs hold
    ('F', [[0.0, 127.0, 255.0]], [0, 127, 255]),
    ('I;16', [[0, 32768, 65535]], [0, 128, 255]),
    ('I', [[0, 128, 255]], [0, 128, 255]),
    ('I', [[0, 70000, 140000]], [0, 128, 255]),  # 32-bit counts, over 16 bits
    ('I', [[-100, 0, 400]], [0, 51, 255]),  # negative values: stretched from the darkest
    ('F', [[-1.0, 0.0, 1.0]], [0, 128, 255]),
    ('F', [[np.nan, 0.5, 1.0]], [0, 128, 255]),  # a missing pixel reads as the darkest
])
def test_deep_and_float_images_are_scaled_to_their_range(mode, pixels, grey):
    image = Image.fromarray(np.array(pixels, dtype={'F': np.float32, 'I;16': np.uint16, 'I': np.int32}[mode]))
    assert image.mode == mode and np.asarray(to_rgb(image))[0, :, 0].tolist() == grey


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no named pipes here')
def test_a_named_pipe_is_unreadable_at_once_not_waited_on(tmp_path):
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
    pipe = tmp_path / 'b.jpg'
    os.mkfifo(pipe)
    done = threading.Event()

    def write_nothing():  # what frees a reader stuck opening the pipe, so that a failure ends
        while not done.wait(1):
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                pass
    writer = threading.Thread(target=write_nothing)
    writer.start()
    try:
        images, read, failed = read_images(list_image_files(str(tmp_path)), 8)
    finally:
        done.set()
        writer.join()
    assert read == [str(tmp_path / 'a.png')] and failed == [(str(pipe), 'OSError: not a regular file')]


@pytest.mark.skipif(distill.images.HEIF_READABLE, reason='pillow-heif is installed here: HEIC photos are read')
def test_a_heic_photo_without_pillow_heif_is_unreadable_with_what_to_install(tmp_path):
    photo = tmp_path / 'IMG_0001.HEIC'
    photo.write_bytes(HEIC_START + bytes(200))
    assert read_images([str(photo)], 8)[2] == [(str(photo), 'HeifUnreadable: a HEIC/HEIF photo, which needs '
                                                            'pillow-heif; pip install pillow-heif to read it')]


def test_a_heic_photo_is_read_where_pillow_heif_is_installed(tmp_path):
    pytest.importorskip('pillow_heif')  # optional: pip install pillow-heif
    Image.new('RGB', (60, 40), (200, 30, 90)).save(tmp_path / 'IMG_0002.HEIC')  # its opener writes HEIC too
    image = read_image(str(tmp_path / 'IMG_0002.HEIC'), 8)
    assert image.shape == (3, 8, 8) and (image.float().mean((1, 2)) - torch.tensor([200, 30, 90])).abs().max() < 8


def test_read_image_scales_16_bit_and_resizes():
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 50), 32896, np.uint16)).save(buffer, 'PNG')
    buffer.seek(0)
    image = read_image(buffer, 12)
    assert image.shape == (3, 12, 12) and image.dtype == torch.uint8 and (image == 128).all()


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_reads_as_when_decoded_whole(monkeypatch):
    from PIL import JpegImagePlugin
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8) * 255, size=(480, 640), mode='bilinear')
    buffer = io.BytesIO()
    Image.fromarray(smooth[0].byte().permute(1, 2, 0).numpy()).save(buffer, 'JPEG', quality=90)
    decoded, draft = [], JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        decoded.append(image.size)
        return result
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, 'draft', spy)
    buffer.seek(0)
    reduced = read_image(buffer, 16)
    assert decoded == [(80, 60)]  # 1/8 scale: still at least twice the 16 px asked for
    buffer.seek(0)
    whole = read_image(buffer, 16, reduced_jpeg=False)
    assert reduced.shape == whole.shape == (3, 16, 16) and (reduced.int() - whole.int()).abs().max() <= 2


def test_pillows_pixel_limit_applies_to_the_pixels_decoded_not_to_the_photos_size(monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # an error above 2,000 pixels, like 179 MP by default
    photo, drawing = io.BytesIO(), io.BytesIO()
    Image.new('RGB', (100, 80), (200, 10, 60)).save(photo, 'JPEG')
    Image.new('RGB', (100, 80), (200, 10, 60)).save(drawing, 'PNG')
    assert read_image(photo, 8).shape == (3, 8, 8)  # 8,000 pixels, decoded at 1/4 scale: 500
    with pytest.raises(Image.DecompressionBombError, match='100 x 80 pixels to decode'):
        read_image(drawing, 8)  # a PNG is decoded whole
    photo.seek(0)
    with pytest.raises(Image.DecompressionBombError):
        read_image(photo, 8, reduced_jpeg=False)
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted only while the file is opened


def test_a_folder_to_classify_is_listed_with_its_linked_folders_once_and_without_hidden_or_system_files(tmp_path):
    folder, elsewhere = tmp_path / 'pictures', tmp_path / 'elsewhere'
    for path in (folder / 'a.png', folder / '.hidden.png', folder / '.cache' / 'b.png', elsewhere / 'c.png',
                 folder / 'Thumbs.db', folder / 'desktop.ini', elsewhere / 'Icon\r', folder / 'thumbs.db.png'):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
    (folder / 'more').symlink_to(elsewhere)  # a user's pictures kept elsewhere: os.walk skipped them
    (folder / 'again').symlink_to(elsewhere)
    (folder / 'up').symlink_to(folder)  # would loop
    listed = [os.path.relpath(p, folder) for p in list_image_files(str(folder))]
    assert listed == ['a.png', 'again/c.png', 'thumbs.db.png']  # the first link in name order


def test_a_folder_that_cannot_be_listed_is_one_line_not_left_out(tmp_path, monkeypatch):
    for path in (tmp_path / 'a.png', tmp_path / 'locked' / 'b.png'):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b'')
    scandir = os.scandir

    def denied(path='.'):  # what a folder of another user's, mode 700, does (root is never refused)
        if os.fspath(path).endswith('locked'):
            raise PermissionError(13, 'Permission denied', os.fspath(path))
        return scandir(path)
    monkeypatch.setattr(os, 'scandir', denied)
    with pytest.raises(UserError, match=r"cannot list the folder '.*locked' \(Permission denied\); give this "
                                        r"user read access to it, or move it out of"):
        list_image_files(str(tmp_path))
