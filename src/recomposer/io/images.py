"""Every image enters recomposer through ``open_image``: one allow-list, one pixel cap, one set of rules.

Normalisation rules (RELIABILITY.md R3), applied in this order:
1. Format must be one of ``ALLOWED_FORMATS``, judged by content (Pillow's sniffing), not by extension.
2. At most ``MAX_PIXELS`` pixels (checked from the header, before decoding) and ``MAX_BYTES`` bytes.
3. Multi-frame files (GIF, APNG, WebP, TIFF): the first frame is used.
4. EXIF orientation is applied, so the picture is upright as a viewer shows it.
5. 16-bit and 32-bit integer grayscale is scaled to 8 bits (value / 257, rounded); float images are refused.
6. Transparency (RGBA, LA, palette with transparency) is composited over white.
7. Everything else (grayscale, palette, CMYK, YCbCr, LAB) is converted to RGB.
Truncated or corrupt files are refused rather than half-decoded.
"""

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import BadImage

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
MAX_PIXELS = 8192 * 8192  # below Pillow's own bomb threshold (about 89 MP)
MAX_BYTES = 256 * 2**20

ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(source: str | Path | bytes, field: str = "image") -> Image.Image:
    """Read an image file (or its bytes) and return it as an 8-bit RGB PIL image, by the rules above."""
    return _to_rgb(decode_image(source, field), field)


def decode_image(source: str | Path | bytes, field: str = "image") -> Image.Image:
    """Rules 1-4 only: allowed format, pixel and byte caps, first frame, EXIF orientation; the mode is
    left as the file has it (for readers that need 16 bits, such as depth maps)."""
    data = _read_bytes(source, field)
    if not data:
        raise BadImage(field, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            if im.width * im.height > MAX_PIXELS:
                raise BadImage(field, f"has {im.width}x{im.height} pixels, over the cap of {MAX_PIXELS}")
            im.seek(0)
            im.load()
            if getattr(im, "n_frames", 1) > 1:  # counting frames reads them all: a cut later frame fails here
                im = im.copy()  # keep only the first frame
            im = ImageOps.exif_transpose(im)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(field, "is not an image in an allowed format (" + ", ".join(ALLOWED_FORMATS) + ")") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(field, f"has too many pixels, over the cap of {MAX_PIXELS} (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, struct.error) as e:
        raise BadImage(field, f"is truncated or corrupt ({e})") from None
    return im


def _read_bytes(source: str | Path | bytes, field: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise BadImage(field, f"no such file: {path}")
        if path.stat().st_size > MAX_BYTES:
            raise BadImage(field, f"file is over {MAX_BYTES // 2**20} MiB")
        data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise BadImage(field, f"file is over {MAX_BYTES // 2**20} MiB")
    return data


def _to_rgb(im: Image.Image, field: str) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode == "F":
        raise BadImage(field, "is a floating-point image; save it as 8- or 16-bit")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def open_mask(source: str | Path | bytes, size: tuple[int, int], field: str = "mask") -> torch.Tensor:
    """A binary mask of exactly ``size`` (width, height): white (luminance >= 128) marks the region to repaint.

    Returns a float tensor (1, 1, H, W) of zeros and ones. A mask of any other size is refused,
    never resized, because a stretched mask edits the wrong pixels.
    """
    im = open_image(source, field)
    if im.size != tuple(size):
        raise BadImage(field, f"is {im.width}x{im.height} but the image is {size[0]}x{size[1]}; they must match")
    gray = np.asarray(im.convert("L"))
    return torch.from_numpy((gray >= 128).astype(np.float32))[None, None]


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (1, 3, H, W) in [-1, 1], as the VAE expects."""
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)  # (H, W, 3)
    return x.permute(2, 0, 1)[None] * 2.0 - 1.0


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Decoded VAE output (B, 3, H, W) in [-1, 1] -> 8-bit RGB images (rounded as diffusers does)."""
    x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in x]
