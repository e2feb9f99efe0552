"""The table of export variants. Export, benchmark, the report, the bundle and the device's selfcheck all
read it, so a new variant is one row here plus its converter function (tests/test_house.py adds one)."""
from dataclasses import dataclass
from typing import Callable

from edge_runtime.errors import InputError

from . import onnx_convert, tflite_convert

KERAS = "keras"  # the run's own Keras model: what every file is measured against


@dataclass(frozen=True)
class Variant:
    name: str
    format: str  # tflite | onnx
    precision: str  # what the weights and arithmetic are
    filename: str
    convert: Callable  # convert(ctx, out_path) -> dict of extra manifest fields
    calibrated: bool = False  # integer activations, ranges from the representative images
    int8_weights: bool = False  # int8 weights (integer or hybrid kernels): a candidate for the integer pick
    integer_io: bool = False  # uint8 input and output
    background: bool = False  # converted in a process of its own beside the others (it keeps every core busy)
    float_preference: int = 0  # the bundle ships the gate-passing float file of lowest rank (0: not a float candidate)
    deployable: bool = True  # may go in a device bundle
    float_source: bool = False  # the benchmark also measures the float model it was converted from (QAT)
    gated_against: str = KERAS  # the model whose predictions its agreement is gated against
    needed_unless: str = ""  # with --qat auto, converted only when this variant's file misses the budget

    @property
    def selfcheck_kind(self):
        """Which tolerances the device's selfcheck applies (edge_runtime/selfcheck.py)."""
        return "integer" if self.calibrated else "float"


VARIANTS = (
    Variant("tflite-fp32", "tflite", "float32", "model-fp32.tflite", tflite_convert.fp32, float_preference=2),
    Variant("tflite-fp16", "tflite", "float16 weights", "model-fp16.tflite", tflite_convert.fp16, float_preference=1),
    Variant("tflite-dynamic", "tflite", "int8 weights, float activations", "model-dynamic.tflite", tflite_convert.dynamic,
            int8_weights=True),
    Variant("tflite-int8", "tflite", "int8", "model-int8.tflite", tflite_convert.int8, calibrated=True, int8_weights=True,
            integer_io=True),
    Variant("tflite-qat-int8", "tflite", "int8 (quantization-aware)", "model-qat-int8.tflite", tflite_convert.qat_int8,
            calibrated=True, int8_weights=True, integer_io=True, background=True, float_source=True,
            needed_unless="tflite-int8"),
    Variant("onnx-fp32", "onnx", "float32", "model-fp32.onnx", onnx_convert.fp32, float_preference=3),
    Variant("onnx-int8", "onnx", "int8 (QDQ, per-channel)", "model-int8.onnx", onnx_convert.int8, calibrated=True,
            int8_weights=True),
)

BY_NAME = {v.name: v for v in VARIANTS}


def get(name):
    """The variant of that name, or None (a benchmark row of the Keras model or a QAT source is no variant)."""
    return BY_NAME.get(name)


def from_names(names):
    """Variants named in a comma-separated string (all when empty), in table order."""
    if not names:
        return list(VARIANTS)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise InputError(f"unknown variant {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    return [v for v in VARIANTS if v.name in wanted]


def float_candidates():
    """The float variants the bundle may ship, most preferred first."""
    ranked = sorted((v for v in VARIANTS if v.float_preference and v.deployable), key=lambda v: v.float_preference)
    return [v.name for v in ranked]
