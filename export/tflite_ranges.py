"""Activation ranges of a calibrated TFLite model: observing its activations (true min/max, and
samples for percentiles) and writing ranges into it (export/ranges.py says which and why).

Why not TFLite's own calibrator for min/max: it logs an op's inputs again after the op has run, and
when the memory planner lets the op write its output over an input (an ADD does), that input gets
the output's values (tensorflow/tensorflow#127842, open). In a ResNet every residual branch feeds
such an ADD, and gets its block's sum's range: a step several times too coarse on every branch
(docs/export.md has the figures, and a test the mechanism on a two-branch model)."""
import os

import numpy as np

from runlib.progress import Progress

from . import ranges


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def stat_tensors(model):
    """Indices of the tensors the calibrator gave a min/max (one value each: per-tensor ranges)."""
    return [i for i, t in enumerate(model.subgraphs[0].tensors)
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1]


def depth(model):
    """{tensor index: share of the ops that run before the op producing it} (0 for the input)."""
    ops = model.subgraphs[0].operators
    return {t: k / len(ops) for k, op in enumerate(ops) for t in op.outputs}


def observe(calibrated, images, seed=0):
    """(model with each calibrated tensor's min/max over the images, {tensor index: ranges.Observed}).

    One pass over the calibration images does what TFLite's calibrator does (a plain running min and
    max per tensor) and also samples the values the percentile ranges need, so the converter only
    has to calibrate on one image to lay out the statistics."""
    import flatbuffers

    from edge_runtime.backends import _tflite_interpreter_class

    model = _schema().ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    tensors = stat_tensors(model)
    import warnings

    with warnings.catch_warnings():  # "intended for debugging": here it is what lets us read every tensor
        warnings.simplefilter("ignore")
        interp = _tflite_interpreter_class()(model_content=bytes(calibrated), experimental_preserve_all_tensors=True,
                                             num_threads=os.cpu_count())  # the default is one thread
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    seen = ranges.Observations(tensors, seed)
    progress = Progress("export", len(images), "calibration images observed")
    for k, img in enumerate(images, 1):
        interp.set_tensor(inp, img[None].astype(np.float32))
        interp.invoke()
        for i in tensors:
            seen.add(i, interp.get_tensor(i))
        progress.update(k)
    observed = seen.result()
    for i, o in observed.items():
        quant = model.subgraphs[0].tensors[i].quantization
        quant.min, quant.max = [o.lo], [o.hi]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), observed


def with_ranges(calibrated, observed, method):
    """The calibrated model with the range of every observed tensor from the method's depth on set to
    its percentile (method: see ranges.parse)."""
    import flatbuffers

    pct, start = ranges.parse(method)
    if pct is None:
        return calibrated
    model = _schema().ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    at = depth(model)
    for i, o in observed.items():
        if at.get(i, 0.0) >= start:
            quant = model.subgraphs[0].tensors[i].quantization
            lo, hi = ranges.clipped(o, pct)
            quant.min, quant.max = [lo], [hi]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
