import torch; torch.set_num_threads(1)  # noqa: E702

# R3: any image input is either normalised by a documented rule (io/images.py) or refused with a
# BadImage whose text starts with the field name. Every file here is made by Pillow in the test.

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

import recomposer.io.images as images
from recomposer.errors import BadImage, RecomposerError
from recomposer.io.images import ALLOWED_FORMATS, MAX_PIXELS, open_image, open_mask, to_pil, to_tensor


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def px(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def refused(source, words: str, field: str = "image") -> BadImage:
    with pytest.raises(BadImage) as e:
        open_image(source, field=field)
    assert isinstance(e.value, RecomposerError)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: "), str(e.value)
    assert words in str(e.value), str(e.value)
    return e.value


# ---------------------------------------------------------------- refusals

def test_empty_bytes_and_empty_file(tmp_path):
    refused(b"", "is empty")
    (tmp_path / "empty.png").write_bytes(b"")
    refused(tmp_path / "empty.png", "is empty", field="init_image")
    refused(str(tmp_path / "empty.png"), "is empty", field="init_image")


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "absent.png", "no such file")
    refused(tmp_path, "no such file", field="mask")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_truncated_file_is_refused(tmp_path, fmt):
    data = encode(noise(), fmt)
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    for source in (data[: len(data) // 2], tmp_path / "cut", data[:20]):
        refused(source, "", field="init_image")


@pytest.mark.parametrize("fmt,words", [("PNG", "truncated or corrupt"), ("JPEG", "truncated or corrupt")])
def test_truncated_png_and_jpeg_messages(fmt, words):
    data = encode(noise(), fmt)
    refused(data[: len(data) // 2], words)
    refused(data[: int(len(data) * 0.9)], words)


def test_truncated_images_setting_is_off():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_multiframe_gif_cut_in_a_later_frame_is_refused_not_a_crash():
    frames = [noise(32, 32, seed=s).convert("P") for s in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = len(encode(frames[0], "GIF"))
    for cut in (first + 21, first + 50):  # escaped as IndexError / struct.error from Pillow before the fix
        refused(data[:cut], "truncated or corrupt")
    want = px(open_image(encode(frames[0], "GIF")))
    for cut in range(first, len(data), 7):  # cut anywhere after the first frame: its pixels, or a refusal
        try:
            got = open_image(data[:cut])
        except BadImage as e:
            assert str(e).startswith("image: is truncated or corrupt")
        else:
            assert (px(got) == want).all()


def test_text_file_named_png(tmp_path):
    path = tmp_path / "picture.png"
    path.write_text("this is not a picture\n" * 10)
    err = refused(path, "is not an image in an allowed format")
    for fmt in ALLOWED_FORMATS:
        assert fmt in str(err)


@pytest.mark.parametrize("fmt,ext", [("ICO", "ico"), ("TGA", "tga"), ("PPM", "ppm"), ("PCX", "pcx"),
                                     ("SGI", "sgi")])
def test_unsupported_format_is_refused_naming_the_allowed_ones(tmp_path, fmt, ext):
    data = encode(noise(32, 32), fmt)
    Image.open(io.BytesIO(data)).load()  # the file is fine: Pillow itself reads it
    (tmp_path / f"x.{ext}").write_bytes(data)
    (tmp_path / "x.png").write_bytes(data)  # the extension does not matter
    assert fmt not in ALLOWED_FORMATS
    for source in (data, tmp_path / f"x.{ext}", tmp_path / "x.png"):
        refused(source, "is not an image in an allowed format (" + ", ".join(ALLOWED_FORMATS) + ")",
                field="style_image")


def test_format_is_judged_by_content_not_extension(tmp_path):
    im = noise()
    (tmp_path / "photo.png").write_bytes(encode(im, "JPEG"))  # a JPEG named .png
    (tmp_path / "data.txt").write_bytes(encode(im, "PNG"))  # a PNG named .txt
    assert open_image(tmp_path / "photo.png").size == im.size
    assert (px(open_image(tmp_path / "data.txt")) == px(im)).all()


def test_float_image_is_refused():
    data = encode(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")
    refused(data, "floating-point", field="depth")


def test_file_over_the_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 2**20)
    data = b"\0" * (2**20 + 1)
    refused(data, "file is over 1 MiB")
    (tmp_path / "big.png").write_bytes(data)
    refused(tmp_path / "big.png", "file is over 1 MiB")


# ---------------------------------------------------------------- pixel bombs

def test_pixel_cap_is_below_pillows_own():
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS


def _bomb(w: int, h: int) -> bytes:
    return encode(Image.new("1", (w, h)), "PNG")  # a few KB on disk, hundreds of MB once decoded as RGB


def _no_decoding(monkeypatch):
    def load(self):
        raise AssertionError("a pixel bomb was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(AssertionError, match="decoded"):  # control: the patch does stop a PNG from decoding
        open_image(encode(Image.new("1", (8, 8)), "PNG"))


def test_real_pixel_bomb_between_our_cap_and_pillows_is_refused_before_decoding(monkeypatch):
    data = _bomb(9000, 9000)  # 81 MP: over our 67 MP cap, under Pillow's 89 MP warning
    assert len(data) < 50_000
    assert MAX_PIXELS < 9000 * 9000 < Image.MAX_IMAGE_PIXELS
    _no_decoding(monkeypatch)
    refused(data, f"has 9000x9000 pixels, over the cap of {MAX_PIXELS}")


def test_real_pixel_bomb_over_pillows_threshold_names_the_cap(monkeypatch):
    data = _bomb(10000, 10000)  # 100 MP: Pillow's DecompressionBombWarning fires first
    _no_decoding(monkeypatch)
    err = refused(data, f"over the cap of {MAX_PIXELS}")
    assert "not an image in an allowed format" not in str(err)  # it is a PNG; the problem is its size
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone switched Pillow's check off: ours still holds
    refused(data, f"has 10000x10000 pixels, over the cap of {MAX_PIXELS}")


def test_pixel_cap_patched_small(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert open_image(encode(noise(10, 10), "PNG")).size == (10, 10)
    refused(encode(noise(11, 10), "PNG"), "has 11x10 pixels, over the cap of 100", field="control_image")
    refused(encode(noise(101, 1), "JPEG"), "has 101x1 pixels, over the cap of 100")


# ---------------------------------------------------------------- normalisation rules

def test_16bit_grayscale_is_scaled_by_257_rounded():
    values = np.array([[0, 1, 128, 129, 257, 385, 386, 32896, 65278, 65535]], dtype=np.uint16)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # still 16-bit when read back
    out = px(open_image(data))
    expected = [0, 0, 0, 1, 1, 1, 2, 128, 254, 255]
    assert out[0, :, 0].tolist() == expected
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_integer_grayscale_is_scaled_and_clipped():
    data = encode(Image.fromarray(np.array([[0, 257, 514, 70000]], np.int32)), "TIFF")
    assert px(open_image(data))[0, :, 0].tolist() == [0, 1, 2, 255]


def _palette_image() -> Image.Image:
    im = Image.new("P", (4, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (252 * 3))
    im.putdata([0, 1, 2, 3])
    return im


def test_palette_png_without_transparency():
    data = encode(_palette_image(), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert px(open_image(data))[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]


def test_palette_png_with_transparent_index_goes_white():
    data = encode(_palette_image(), "PNG", transparency=1)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    assert px(open_image(data))[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255], [10, 20, 30]]


def test_palette_png_with_per_index_alpha():
    data = encode(_palette_image(), "PNG", transparency=bytes([255, 0, 128, 255]))
    assert px(open_image(data))[0].tolist() == [[255, 0, 0], [255, 255, 255], [127, 127, 255], [10, 20, 30]]


def test_rgba_is_composited_over_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 50, 128]]], np.uint8)
    out = px(open_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))[0]
    assert out[0].tolist() == [255, 255, 255]  # fully transparent: white
    assert out[1].tolist() == [10, 20, 30]  # opaque: unchanged
    assert out[2].tolist() == [127, 127, 127]  # half black over white: in between
    for c, v in zip(out[3], (200, 100, 50)):  # half colour over white: on the line between colour and white
        assert min(v, 255) <= c <= max(v, 255) and abs(c - round(v * 128 / 255 + 255 * 127 / 255)) <= 1


def test_la_is_composited_over_white():
    la = np.array([[[0, 0], [0, 255], [100, 128]]], np.uint8)
    out = px(open_image(encode(Image.fromarray(la, "LA"), "PNG")))[0]
    assert out.tolist() == [[255, 255, 255], [0, 0, 0], [177, 177, 177]]


def test_cmyk_jpeg_becomes_rgb():
    for cmyk, rgb in (((0, 255, 255, 0), (255, 0, 0)), ((0, 0, 0, 0), (255, 255, 255)), ((0, 0, 0, 255), (0, 0, 0))):
        data = encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=100)
        assert Image.open(io.BytesIO(data)).mode == "CMYK"
        out = px(open_image(data))
        assert out.shape == (16, 16, 3)
        assert np.abs(out - np.array(rgb)).max() <= 3, (cmyk, out[0, 0])


def test_grayscale_and_bilevel_become_rgb_with_equal_channels():
    g = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    out = px(open_image(encode(Image.fromarray(g, "L"), "PNG")))
    assert (out[..., 0] == g).all() and (out[..., 1] == g).all() and (out[..., 2] == g).all()
    bits = Image.fromarray(g >= 100)
    assert bits.mode == "1"
    out = px(open_image(encode(bits, "PNG")))
    assert (out[..., 0] == np.where(g >= 100, 255, 0)).all() and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation,size,top", [(1, (40, 20), None), (3, (40, 20), None),
                                                  (6, (20, 40), "red"), (8, (20, 40), "blue")])
def test_exif_orientation_is_applied(fmt, orientation, size, top):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = im.getexif()
    exif[274] = orientation
    out = open_image(encode(im, fmt, exif=exif.tobytes()))
    assert out.size == size
    if top is not None:  # 6: turned clockwise, so the left half is on top; 8: anticlockwise
        a = px(out)
        upper, lower = a[: 15].mean(axis=(0, 1)), a[25:].mean(axis=(0, 1))
        red, blue = (upper, lower) if top == "red" else (lower, upper)
        assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_multiframe_file_gives_its_first_frame(fmt):
    first, second = Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 0, 255))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=[second], **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = open_image(data)
    assert getattr(out, "n_frames", 1) == 1
    assert (px(out) == [255, 0, 0]).all()


def test_bytes_and_path_give_the_same_pixels(tmp_path):
    im = noise(37, 23)
    data = encode(im, "PNG")
    (tmp_path / "x.png").write_bytes(data)
    a, b, c = open_image(data), open_image(tmp_path / "x.png"), open_image(str(tmp_path / "x.png"))
    assert (px(a) == px(im)).all() and (px(b) == px(im)).all() and (px(c) == px(im)).all()


# ---------------------------------------------------------------- masks

def _mask_bytes(values: np.ndarray, fmt: str = "PNG") -> bytes:
    return encode(Image.fromarray(values.astype(np.uint8), "L"), fmt)


def test_mask_binarised_at_128():
    values = np.array([[0, 1, 127, 128, 129, 255]], np.uint8)
    m = open_mask(_mask_bytes(values), (6, 1))
    assert m.shape == (1, 1, 1, 6) and m.dtype == torch.float32
    assert m[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_mask_from_rgb_uses_luminance_and_path_works(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [128, 128, 128], [127, 127, 127]]], np.uint8)
    (tmp_path / "m.png").write_bytes(encode(Image.fromarray(rgb), "PNG"))
    m = open_mask(tmp_path / "m.png", (4, 1))
    assert m[0, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]  # L(red) = 76, L(green) = 150


@pytest.mark.parametrize("size", [(7, 5), (5, 7), (6, 4)])
def test_mask_of_wrong_size_is_refused_naming_mask(size):
    data = _mask_bytes(np.full((5, 6), 255))
    with pytest.raises(BadImage) as e:
        open_mask(data, size)
    assert str(e.value).startswith("mask: ")
    assert f"is 6x5 but the image is {size[0]}x{size[1]}" in str(e.value)


def test_mask_refusals_name_the_mask_field():
    cut = encode(noise(8, 8).convert("L"), "PNG")
    for data, words in ((b"", "is empty"), (b"not an image", "allowed format"),
                        (cut[: len(cut) * 2 // 3], "truncated or corrupt")):
        with pytest.raises(BadImage) as e:
            open_mask(data, (8, 8))
        assert str(e.value).startswith("mask: ") and words in str(e.value)
    with pytest.raises(BadImage) as e:
        open_mask(b"", (8, 8), field="inpaint_mask")
    assert str(e.value).startswith("inpaint_mask: ")


# ---------------------------------------------------------------- tensors

def test_to_tensor_to_pil_round_trip_is_exact():
    values = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3)
    rng = np.random.default_rng(3)
    a = np.stack([values % 256, rng.permutation(values.ravel() % 256).reshape(16, 16, 3)]).astype(np.uint8)
    for arr in a:
        im = Image.fromarray(arr[..., :3].copy())
        x = to_tensor(im)
        assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        (back,) = to_pil(x)
        assert back.mode == "RGB" and (np.asarray(back) == np.asarray(im)).all()


def test_to_tensor_range_and_layout():
    im = Image.fromarray(np.array([[[0, 255, 51]]], np.uint8))
    x = to_tensor(im)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])
