"""Image decoding and preprocessing: any common format to uint8 tensors, bombs and broken files refused."""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 64_000_000   # decompression bomb guard for single images
# "Native size" (data.image_size unset) is capped here: a folder of 4000x3000 camera photos trained at
# their own size needs tens of GB (20 of them once grew a job to 13.7 GB until the OOM killer). 224 px
# is what torchvision's architectures are designed for; set data.image_size (up to 1024) for more.
NATIVE_SIDE_LIMIT = 224
_EIGHT_BIT = ("L", "RGB")


def load_pil(raw: bytes, min_side: int | None = None):
    """Decode bytes into an 8-bit RGB or L PIL image, refusing bombs and broken files with a clear message.

    With ``min_side``, a larger image is decoded reduced, no smaller than that on its shorter side: a JPEG
    by its decoder's DCT scaling (``draft``: a 4000x3000 photo for 64 px decodes at 500x375 and never
    occupies 36 MB), other formats by an integer box reduction right after decoding."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"image is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS:,} pixel limit")
            im.seek(0)  # animated images: first frame
            if min_side and im.format == "JPEG" and im.mode in ("L", "RGB", "CMYK", "YCbCr"):
                im.draft(im.mode, (min_side, min_side))  # the largest DCT scale that keeps both sides >= min_side
            im = ImageOps.exif_transpose(im)
            im.load()
            im = to_8_bit(im)
            if min_side and min(im.size) >= 2 * min_side:
                im = im.reduce(min(im.size) // min_side)
            return im
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"damaged or truncated image: {e}") from None


def to_8_bit(im):
    """Any Pillow mode as 8-bit L or RGB: what models, thumbnails and browsers all take.

    16-bit, 32-bit integer and float images are scaled by their range (0 stays black for data without
    negative values; float data within [0, 1] is taken as such); LAB goes through a colour transform;
    transparency is composited on white."""
    from PIL import Image, ImageCms
    mode = im.mode
    if mode in _EIGHT_BIT:
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, I;16N, F
        return Image.fromarray(_scaled_to_uint8(np.asarray(im), floating=mode == "F"), "L")
    if mode == "LAB":
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        return ImageCms.applyTransform(im, lab_to_srgb)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("L" if mode in ("LA", "La") else "RGB")
    return im.convert("RGB")  # CMYK, P, YCbCr, HSV, RGBX, ...


def _scaled_to_uint8(arr: np.ndarray, floating: bool) -> np.ndarray:
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if floating and 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0   # a float image in [0, 1] is already on an absolute scale
    else:
        lo = min(lo, 0.0)   # non-negative data keeps 0 as black: a dim 12-bit image stays dim
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((a - lo) * scale).round().clip(0, 255).astype(np.uint8)


def decode_image(raw: bytes, size: int | None = None) -> torch.Tensor:
    """Bytes -> a square uint8 (C, H, W) tensor: ``size`` pixels a side, or, without ``size``, the
    image's shorter side capped at NATIVE_SIDE_LIMIT. Large images are decoded reduced (see load_pil)."""
    im = load_pil(raw, min_side=size or NATIVE_SIDE_LIMIT)
    arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    side = size or min(min(t.shape[-2:]), NATIVE_SIDE_LIMIT)
    if t.shape[-1] != side or t.shape[-2] != side:
        t = resize_uint8(t, side)
    return t.contiguous()


def resize_uint8(t: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 image(s) (C, H, W) or (N, C, H, W) resized to ``size`` (square) or (height, width)."""
    h, w = (size, size) if isinstance(size, int) else size
    batched = t.ndim == 4
    x = t if batched else t[None]
    out = torch.empty((x.shape[0], x.shape[1], h, w), dtype=torch.uint8)
    for i in range(0, len(x), 4096):  # chunks: bounded memory for large sets
        y = F.interpolate(x[i:i + 4096].float(), size=(h, w), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + 4096] = y.round().clamp_(0, 255).to(torch.uint8)
    return out if batched else out[0]


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey images feed 3-channel models: repeat the single channel."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def preprocess_image(raw: bytes, meta: dict) -> torch.Tensor:
    """Bytes of any common image format -> one normalised (1, 3, H, W) batch for a bundle's model."""
    size = int(meta["input_size"][-1])
    t = decode_image(raw, size)
    channels = int(meta.get("channels", 3))
    if channels == 1 and t.shape[0] == 3:
        t = (t.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True).round().to(torch.uint8)
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    x = t[None].float() / 255.0
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return to_rgb((x - mean) / std)
