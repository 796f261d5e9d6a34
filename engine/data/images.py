"""Image decoding and preprocessing: any common format to uint8 tensors, bombs and broken files refused."""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 64_000_000   # decompression bomb guard for single images


def load_pil(raw: bytes):
    """Decode bytes into an RGB or L PIL image, refusing bombs and broken files with a clear message."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"image is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS:,} pixel limit")
            im.seek(0)  # animated images: first frame
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = arr.max() or 1.0
                im = Image.fromarray((arr / top * 255).round().astype(np.uint8), "L")
            elif im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba).convert("RGB")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")  # CMYK, P, YCbCr, ...
            return im
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"damaged or truncated image: {e}") from None


def decode_image(raw: bytes, size: int | None = None) -> torch.Tensor:
    im = load_pil(raw)
    arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if size is not None and (t.shape[-1] != size or t.shape[-2] != size):
        t = resize_uint8(t, size)
    elif t.shape[-1] != t.shape[-2]:
        t = resize_uint8(t, min(t.shape[-2:]))
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
    t = decode_image(raw)
    channels = int(meta.get("channels", 3))
    if channels == 1 and t.shape[0] == 3:
        t = (t.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True).round().to(torch.uint8)
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    t = resize_uint8(t, size)
    x = t[None].float() / 255.0
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return to_rgb((x - mean) / std)
