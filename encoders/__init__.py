"""Media encoders, one module per family; importing this package registers them all in ENCODERS.

Heavy libraries (open_clip, timm, transformers) are imported inside the constructors, so looking up
`small_cnn` does not pay for them.
"""
from . import hf_vision, open_clip_encoder, point_bert, small_cnn, small_vit, timm_encoder, video
from .base import Encoder
from .hf_vision import HFVisionEncoder
from .open_clip_encoder import OpenCLIPEncoder
from .point_bert import PointBERTEncoder, farthest_point_sample, knn_indices
from .small_cnn import SmallCNNEncoder
from .small_vit import SmallViTEncoder
from .timm_encoder import TimmEncoder
from .video import VideoEncoder, uniform_frame_indices

__all__ = [
    "Encoder",
    "HFVisionEncoder",
    "OpenCLIPEncoder",
    "PointBERTEncoder",
    "SmallCNNEncoder",
    "SmallViTEncoder",
    "TimmEncoder",
    "VideoEncoder",
    "farthest_point_sample",
    "knn_indices",
    "uniform_frame_indices",
]
