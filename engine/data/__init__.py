"""Datasets for the engine: ``data.load(spec)`` gives a DataBundle of decoded splits and their loaders.

Every dataset is decoded once into uint8 tensors (N, C, H, W) kept in memory (and cached on disk
for image folders), so training never waits on JPEG decoding; normalisation, grey->RGB and
augmentation (random crop + flip) happen per batch on the training device, vectorised.

This ``__init__`` is the package's public face: callers use ``from engine import data`` and these
names, whichever module below defines them.
- ``bundle``: Split, DataBundle, BatchLoader (the in-memory splits and their batches), order_seed
- ``sources``: the dataset registry (DATASETS, register_dataset) and its sources, the image-folder cache
- ``listing``: ImageFolder listings of a folder or zip, and the archive guards
- ``images``: image decoding and preprocessing
- ``memory``: the memory an image folder takes decoded, checked before queueing and before decoding
- ``walk`` / ``zipnames``: a folder listed within bounds; zip member names as their author meant them
- ``assembly``: ``load``, a spec to its bundle
- ``errors``: DataError (a dataset that cannot be used), ImageError (an image that cannot)
"""
from .assembly import default_batch_size, load
from .bundle import BatchLoader, DataBundle, Split, order_seed, random_crop
from .errors import DataError, ImageError
from .images import IMAGE_SUFFIXES, NATIVE_SIDE_LIMIT, decode_image, load_pil, preprocess_image, resize_uint8, to_rgb
from .listing import describe_imagefolder
from .memory import Estimate
from .sources import DATASETS, FASHION_CLASSES, check_decoding_memory, register_dataset

__all__ = ["BatchLoader", "DATASETS", "DataBundle", "DataError", "Estimate", "FASHION_CLASSES",
           "IMAGE_SUFFIXES", "ImageError", "NATIVE_SIDE_LIMIT", "Split", "check_decoding_memory", "decode_image", "default_batch_size",
           "describe_imagefolder", "load", "load_pil", "order_seed", "preprocess_image", "random_crop", "register_dataset",
           "resize_uint8", "to_rgb"]
