"""The table of export variants. Export, benchmark and the report all iterate over it,
so a new variant is one row here plus its converter function."""
from dataclasses import dataclass
from typing import Callable

from . import onnx_convert, tflite_convert


@dataclass(frozen=True)
class Variant:
    name: str
    format: str  # tflite | onnx
    precision: str  # what the weights and arithmetic are
    filename: str
    convert: Callable  # convert(ctx, out_path) -> dict of extra manifest fields
    calibrated: bool = False  # uses the representative images
    integer_io: bool = False  # uint8 input and output


VARIANTS = (
    Variant("tflite-fp32", "tflite", "float32", "model-fp32.tflite", tflite_convert.fp32),
    Variant("tflite-fp16", "tflite", "float16 weights", "model-fp16.tflite", tflite_convert.fp16),
    Variant("tflite-dynamic", "tflite", "int8 weights, float activations", "model-dynamic.tflite", tflite_convert.dynamic),
    Variant("tflite-int8", "tflite", "int8", "model-int8.tflite", tflite_convert.int8, calibrated=True, integer_io=True),
    Variant("tflite-qat-int8", "tflite", "int8 (quantization-aware)", "model-qat-int8.tflite", tflite_convert.qat_int8,
            calibrated=True, integer_io=True),
    Variant("onnx-fp32", "onnx", "float32", "model-fp32.onnx", onnx_convert.fp32),
    Variant("onnx-int8", "onnx", "int8 (QDQ, per-channel)", "model-int8.onnx", onnx_convert.int8, calibrated=True),
)

BY_NAME = {v.name: v for v in VARIANTS}


def select(names):
    """Variants named in a comma-separated string (all when empty), in table order."""
    from edge_runtime.errors import InputError

    if not names:
        return list(VARIANTS)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise InputError(f"unknown variant {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    return [v for v in VARIANTS if v.name in wanted]
