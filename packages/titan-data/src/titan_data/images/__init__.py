"""Image-caption data for diffusion training: sources, transforms, a checkpointable loader, latent caches."""

from titan_data.images.build import IMAGE_DATASETS, build_image_loader, open_image_source
from titan_data.images.encode import encode_to_cache
from titan_data.images.loader import ImageCaptionLoader, MapImageLoader
from titan_data.images.stream import StreamImageLoader
from titan_data.images.synthetic import make_synthetic_image_captions
from titan_data.images.transforms import image_tensor
from titan_data.images.webdataset import write_webdataset

__all__ = [
    "IMAGE_DATASETS",
    "ImageCaptionLoader",
    "MapImageLoader",
    "StreamImageLoader",
    "build_image_loader",
    "encode_to_cache",
    "image_tensor",
    "make_synthetic_image_captions",
    "open_image_source",
    "write_webdataset",
]
