"""Reading image files of any format and mode (JPEG, PNG, 16-bit, float, HEIC where pillow-heif is installed)
into RGB uint8 tensors: what infer.py classifies and an image folder holds."""
import os
import stat
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import UserError

# What Pillow raises for corrupt, truncated, empty or non-image files.
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
try:  # HEIC/HEIF, an iPhone's photos: Pillow reads them where the optional pillow-heif is installed
    from pillow_heif import register_heif_opener
    register_heif_opener()
    HEIF_READABLE = True
except ImportError:
    HEIF_READABLE = False
SYSTEM_FILES = {'thumbs.db', 'ehthumbs.db', 'desktop.ini', 'icon\r'}  # what Windows and macOS leave in a folder
HEIF_BRANDS = (b'heic', b'heix', b'heim', b'heis', b'hevc', b'hevx', b'mif1', b'msf1')


class HeifUnreadable(UnidentifiedImageError):
    def __init__(self):
        super().__init__('a HEIC/HEIF photo, which needs pillow-heif; pip install pillow-heif to read it')


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: 16-bit, 32-bit and float images are rescaled (NaN as their darkest), alpha is
    composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
        pixels = np.asarray(image, dtype=np.float64)
        finite = pixels[np.isfinite(pixels)]
        darkest, brightest = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        # Scientific float TIFFs hold 0..1; integer images 0..255 or 0..65535.
        ranges = ([1.0] if image.mode == 'F' else []) + [255.0, 65535.0]
        bottom, top = 0.0, next((t for t in ranges if brightest <= t), None)
        if darkest < 0 or top is None:  # any other range (negative values, 32-bit counts): stretched to fit
            bottom, top = darkest, max(brightest, darkest + 1e-6)
        pixels = np.nan_to_num(pixels, nan=bottom, posinf=top, neginf=bottom).clip(bottom, top)
        image = Image.fromarray(((pixels - bottom) * (255.0 / (top - bottom))).round().astype(np.uint8), 'L')
    if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert('RGB')


def read_image(source, size: int, reduced_jpeg: bool = True) -> torch.Tensor:
    """Decode a path or file object to a 3 x size x size uint8 tensor (the whole image, resized).

    reduced_jpeg: a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 scale (still at least twice
    size) by the decoder itself; full decoding of a photo costs far more than the network that reads it."""
    if isinstance(source, (str, os.PathLike)) and not stat.S_ISREG(os.stat(source).st_mode):
        raise OSError('not a regular file')  # opening a named pipe would wait for a writer forever
    with _open_image(source) as (image, limit), warnings.catch_warnings():
        # A palette image with transparency warns on convert; to_rgb composites it on white on purpose.
        warnings.filterwarnings('ignore', message='Palette images with Transparency', category=UserWarning)
        if reduced_jpeg:
            image.draft(None, (2 * size, 2 * size))  # JPEG only; other formats ignore it
        if limit and image.width * image.height > limit:
            raise Image.DecompressionBombError(f'{image.width} x {image.height} pixels to decode, over the '
                                               f'{limit} that Pillow allows; downscale it')
        image = to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR, reducing_gap=None)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


@contextmanager
def _open_image(source):
    """Image.open, with Pillow's decompression-bomb limit left for the caller to apply to the pixels it will
    decode (a 200-megapixel phone photo is over the limit, but decoded at 1/8 scale it is far under), and a
    HEIC photo that Pillow cannot read without pillow-heif named as such. Yields (image, limit), limit being
    Pillow's error threshold (None when the user lifted it)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        if not HEIF_READABLE and _is_heif(source):
            raise HeifUnreadable() from None
        raise
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with image:
        yield image, limit and 2 * limit


def _is_heif(source) -> bool:
    """Whether the file begins as a HEIF container does: an 'ftyp' box that names a HEIF brand."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, 'rb') as f:
                head = f.read(12)
        else:
            source.seek(0)
            head = source.read(12)
    except OSError:
        return False
    return head[4:8] == b'ftyp' and head[8:12] in HEIF_BRANDS


def list_image_files(folder: str) -> list:
    """Every non-hidden file under folder, recursively, in a stable order, but the operating system's own
    (Thumbs.db, desktop.ini): what infer.py classifies and a data folder holds. Linked folders are followed, each
    folder once (a link to a folder above would loop). A folder that cannot be listed is an error: its images
    would be left out unseen."""
    def refuse(err: OSError):
        raise UserError(f"cannot list the folder '{err.filename}' ({err.strerror}); give this user read access "
                        f"to it, or move it out of '{folder}'")
    files, seen = [], {os.path.realpath(folder)}
    for root, dirs, names in os.walk(folder, onerror=refuse, followlinks=True):
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if not name.startswith('.') and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        files += [os.path.join(root, name) for name in names
                  if not name.startswith('.') and name.lower() not in SYSTEM_FILES]
    return sorted(files)


def read_images(paths, size: int, reduced_jpeg: bool = True):
    """Decode what can be decoded. Returns (uint8 images, the paths read, [(path, why) for the rest])."""
    images, read, failed = [], [], []
    for path in paths:
        try:
            images.append(read_image(path, size, reduced_jpeg))
            read.append(path)
        except READ_ERRORS as err:
            failed.append((path, f'{err.__class__.__name__}: {err}'.splitlines()[0]))
    stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return stacked, read, failed
