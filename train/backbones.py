"""The supported keras.applications backbones (a TF-free table, so option parsing stays fast)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    build: str  # keras.applications constructor name
    normalize: str  # caffe (BGR, mean subtracted), tf (-1..1) or none (model does it)
    unfreeze_from: str  # default first layer of the deeper part unfrozen in phase 2
    has_alpha: bool = False


BACKBONES = {
    "resnet50": Backbone("ResNet50", "caffe", "conv5_block1"),
    # conv_dw_8, not conv_dw_12: better on Leeds at 160 and 224 px over 3 seeds (docs/training.md, the ablation)
    "mobilenet": Backbone("MobileNet", "tf", "conv_dw_8", has_alpha=True),
    "mobilenet_v2": Backbone("MobileNetV2", "tf", "block_13", has_alpha=True),
    "efficientnet_b0": Backbone("EfficientNetB0", "none", "block6a"),
}
