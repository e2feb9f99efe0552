"""Thin wrappers over the two inference runtimes, with one interface: run(uint8 or float batch) -> raw output.

Each reports its input/output tensor as a TensorSpec so the classifier can quantize and
dequantize without caring which runtime it talks to.
"""
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass
class TensorSpec:
    name: str
    shape: list
    dtype: str  # numpy dtype name
    scale: float = 0.0  # quantization; scale 0 means a float tensor
    zero_point: int = 0

    @property
    def quantized(self):
        return self.scale != 0.0

    def as_dict(self):
        d: dict[str, object] = {"name": self.name, "shape": self.shape, "dtype": self.dtype}
        if self.quantized:
            d["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return d


def _tflite_interpreter_class():
    """ai-edge-litert first (the maintained runtime), then tflite-runtime, then TensorFlow itself."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter
    except ImportError:
        raise InputError("no TFLite runtime installed: pip install ai-edge-litert") from None


# Runtime options that change speed, never the model: each backend takes its own as keyword
# arguments. The benchmark tries each choice on its machine and records the fastest whose
# predictions equal the library defaults' (the first choice of each option).
SETTINGS: dict[str, dict[str, tuple]] = {
    # XNNPACK (TFLite's default delegate) and the built-in kernels pick different int8 and float kernels
    "tflite": {"xnnpack": (True, False)},
    # how much ONNX Runtime rewrites the graph (QDQ fusion into integer kernels happens at 'extended' and up)
    "onnx": {"graph_optimization": ("all", "extended", "basic")},
}


def setting_choices(fmt):
    """Every combination of a format's settings, library defaults first."""
    import itertools

    options = SETTINGS[fmt]
    return [dict(zip(options, combo)) for combo in itertools.product(*options.values())]


def describe_settings(settings):
    return ", ".join(f"{k}={'on' if v is True else 'off' if v is False else v}" for k, v in settings.items()) or "defaults"


class TFLiteBackend:
    format = "tflite"

    def __init__(self, path, threads=None, xnnpack=True):
        Interpreter = _tflite_interpreter_class()
        extra = {}
        if not xnnpack:
            import sys

            resolver = getattr(sys.modules[Interpreter.__module__], "OpResolverType", None)
            if resolver is None:
                raise InputError("this TFLite runtime cannot turn XNNPACK off (no OpResolverType)")
            extra["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads, **extra)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InputError(f"{path}: not a valid TFLite model, truncated or corrupt ({str(e).splitlines()[0]})") from None
        self._batch = None
        self._lock = threading.Lock()  # a TFLite interpreter is not safe to call from two threads at once
        (self._in,), (self._out,) = self.interp.get_input_details(), self.interp.get_output_details()
        self.input, self.output = self._spec(self._in), self._spec(self._out)

    @staticmethod
    def _spec(d):
        scale, zp = d.get("quantization", (0.0, 0))
        shape = [int(s) for s in d.get("shape_signature", d["shape"])]
        return TensorSpec(d["name"], shape, np.dtype(d["dtype"]).name, float(scale), int(zp))

    def run(self, batch):
        with self._lock:  # set, invoke and read back as one step; get_tensor returns a copy
            if self._batch != len(batch):
                self.interp.resize_tensor_input(self._in["index"], list(batch.shape))
                self.interp.allocate_tensors()
                self._batch = len(batch)
            self.interp.set_tensor(self._in["index"], batch)
            self.interp.invoke()
            return self.interp.get_tensor(self._out["index"])


class OnnxBackend:
    format = "onnx"

    LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
              "disabled": "ORT_DISABLE_ALL"}

    def __init__(self, path, threads=None, graph_optimization="all"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("onnxruntime is not installed: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.LEVELS[graph_optimization])
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  onnxruntime raises its own exception types for corrupt files
            raise InputError(f"{path}: not a valid ONNX model, "
                             f"truncated or corrupt ({str(e).splitlines()[0][:200]})") from None
        (i,), (o,) = self.sess.get_inputs(), self.sess.get_outputs()
        self.input = TensorSpec(i.name, [d if isinstance(d, int) else -1 for d in i.shape], _onnx_dtype(i.type))
        self.output = TensorSpec(o.name, [d if isinstance(d, int) else -1 for d in o.shape], _onnx_dtype(o.type))
        self.metadata = dict(self.sess.get_modelmeta().custom_metadata_map)

    def run(self, batch):  # InferenceSession.run is safe to call from several threads at once
        return self.sess.run([self.output.name], {self.input.name: batch})[0]


def _onnx_dtype(type_str):
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
            "tensor(float16)": "float16"}.get(type_str, type_str)


BACKENDS: dict[str, type[TFLiteBackend] | type[OnnxBackend]] = {".tflite": TFLiteBackend, ".onnx": OnnxBackend}


def open_backend(path, threads=None, settings=None):
    """A backend for a .tflite or .onnx file; settings: that format's SETTINGS (missing ones keep the library default)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    backend = BACKENDS.get(path.suffix.lower())
    if backend is None:
        raise InputError(f"{path}: unknown model type {path.suffix!r} (expected .tflite or .onnx)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty model file")
    settings = dict(settings or {})
    fmt = backend.format
    for key, value in settings.items():
        if key not in SETTINGS[fmt]:
            raise InputError(f"unknown {fmt} runtime setting {key!r}; known: {', '.join(SETTINGS[fmt])}")
        if value not in SETTINGS[fmt][key] and not (fmt == "onnx" and value in OnnxBackend.LEVELS):
            shown = [{True: "on", False: "off"}.get(v, v) for v in SETTINGS[fmt][key]]
            raise InputError(f"runtime setting {key}={value!r} is not one of {', '.join(map(str, shown))}")
    return backend(path, threads, **settings)
