"""The backbones a run can train: one row each (a TF-free table, so option parsing stays fast).

The `--backbone` choices come from this table. A new backbone is one row: a keras.applications
constructor name, or a builder `build(include_top=False, weights=..., input_shape=... | input_tensor=...)`
that returns a Keras model whose layers end where the head begins.
"""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backbone:
    build: str | Callable  # keras.applications constructor name, or a builder taking its keywords
    normalize: str  # caffe (BGR, mean subtracted), tf (-1..1) or none (model does it)
    unfreeze_from: str  # default first layer of the deeper part unfrozen in phase 2
    has_alpha: bool = False


BACKBONES = {
    "resnet50": Backbone("ResNet50", "caffe", "conv5_block1"),
    # the default unfreeze point of each is the ablation's pick (docs/training.md)
    "mobilenet": Backbone("MobileNet", "tf", "conv_dw_8", has_alpha=True),
    "mobilenet_v2": Backbone("MobileNetV2", "tf", "block_13", has_alpha=True),
    "efficientnet_b0": Backbone("EfficientNetB0", "none", "block6a"),
}
