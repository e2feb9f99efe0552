"""Activation ranges of ONNX Runtime's QDQ models: sampling the activations of the float graph and
writing clipped ranges into the QuantizeLinear/DequantizeLinear pairs (export/ranges.py says which
and why). Sampling is ours because ONNX Runtime's percentile calibrator keeps every activation value
of every calibration image, too much memory at 224 px."""
import copy

import numpy as np

from runlib.progress import Progress

from . import ranges


def activations(qdq):
    """{float tensor: (scale initializer, zero-point initializer)} of the activations the QDQ model
    quantizes (weights and biases, which are initializers, are left alone)."""
    inits = {i.name for i in qdq.graph.initializer}
    return {n.input[0]: (n.input[1], n.input[2]) for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) == 3}


def depth(float_model):
    """{tensor: share of the nodes that come before the node producing it} (graph inputs: 0)."""
    nodes = float_model.graph.node
    return {o: k / len(nodes) for k, n in enumerate(nodes) for o in n.output}


def observe(float_model, qdq, images, seed=0):
    """{tensor: ranges.Observed (min, max, percentiles)} of every activation the QDQ model quantizes, over the
    calibration images, from the float graph with those tensors added as outputs. The min/max are the
    statistic ONNX Runtime's MinMax calibrator computes (a test checks they agree on a small model),
    so the quantizer itself only calibrates on one image (to place the Q/DQ pairs) and this one pass
    gives both the ranges and the percentiles."""
    import onnx
    import onnxruntime as ort

    m = copy.deepcopy(float_model)
    present = {o.name for o in m.graph.output}
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    names = [t for t in activations(qdq) if t in produced]
    for t in names:
        if t not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    seen = ranges.Observations(names, seed)
    progress = Progress("export", len(images), "calibration images observed")
    for k, img in enumerate(images, 1):
        for t, v in zip(names, session.run(names, {input_name: img[None].astype(np.float32)})):
            seen.add(t, v)
        progress.update(k)
    return seen.result()


def with_ranges(qdq, float_model, observed, method):
    """A copy of the QDQ model whose activations get their observed min/max, clipped to the method's
    percentile from its depth on (uint8, asymmetric: scale = range / 255, zero point where 0 falls,
    as ONNX Runtime's quantizer computes them); then each Relu/Clip's range is given to the tensor
    it reads (see tie_activations) and every int32 bias is quantized again for the new input scales
    (see requantize_biases)."""
    m = copy.deepcopy(qdq)
    pct, start = ranges.parse(method)
    _set_ranges(m, float_model, observed, pct, start)
    tie_activations(m)
    requantize_biases(m)
    return m


def requantize_biases(m):
    """Keep each int32 bias at scale = input scale x weight scale, as ONNX Runtime's quantizer wrote it.

    The quantized Conv/Gemm kernels ONNX Runtime fuses at load time read the int32 bias at exactly
    that scale, whatever scale its DequantizeLinear names; a bias quantized for the calibrator's input
    range would be off by the ratio of the old and new ranges after the edits above."""
    from onnx import numpy_helper

    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}

    def dq_of(tensor):
        n = producer.get(tensor)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    for node in (n for n in m.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) >= 3):
        x, w, b = (dq_of(t) for t in node.input[:3])
        if x is None or w is None or b is None or b.input[0] not in inits or b.input[1] not in inits:
            continue
        if w.input[0] not in inits or w.input[1] not in inits or x.input[1] not in inits:
            continue
        bias_q = numpy_helper.to_array(inits[b.input[0]])
        if bias_q.dtype != np.int32:
            continue
        old_scale = numpy_helper.to_array(inits[b.input[1]])
        bias = bias_q.astype(np.float64) * old_scale.astype(np.float64)
        scale = float(numpy_helper.to_array(inits[x.input[1]])) * numpy_helper.to_array(inits[w.input[1]]).astype(np.float64)
        scale = np.broadcast_to(scale, bias.shape)
        if np.allclose(scale, old_scale, rtol=1e-6, atol=0):
            continue
        safe = np.where(scale > 0, scale, 1.0)
        if old_scale.size != safe.size:
            if not np.all(safe == safe.flat[0]):
                continue  # a per-tensor bias scale cannot hold per-channel products
            safe = np.full(old_scale.shape, safe.flat[0])
        q = np.clip(np.round(bias / safe), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        inits[b.input[0]].CopyFrom(numpy_helper.from_array(q, b.input[0]))
        inits[b.input[1]].CopyFrom(numpy_helper.from_array(safe.astype(np.float32).reshape(old_scale.shape), b.input[1]))


def tie_activations(m):
    """Give the output of a Conv/Add/Gemm the range of the Relu or Clip that reads it.

    ONNX Runtime's quantizer does so itself (it calibrates the pair as one), and when it loads the
    file it folds the activation into the quantized op, which then computes at that op's output step.
    Percentiles taken of the two tensors apart differ (the one before a Relu holds its negative
    values), so after clipping the activation's range is given to the op again."""
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    quantized = activations(m)
    for act in (n for n in g.node if n.op_type in ("Relu", "Clip")):
        dq = producer.get(act.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or act.output[0] not in quantized:
            continue
        src = producer.get(q.input[0])
        if src is None or src.op_type not in ("Conv", "Add", "Gemm", "MatMul") or len(q.input) < 3 \
                or readers.get(q.input[0]) != 1 or readers.get(dq.output[0]) != 1:
            continue  # only when the activation is all that reads the tensor
        act_scale, act_zp = quantized[act.output[0]]
        for name, value in ((q.input[1], act_scale), (q.input[2], act_zp)):
            if name != value:
                inits[name].CopyFrom(_renamed(inits[value], name))


def _renamed(init, name):
    out = copy.deepcopy(init)
    out.name = name
    return out


def _set_ranges(m, float_model, observed, pct, start):
    from onnx import numpy_helper

    inits = {i.name: i for i in m.graph.initializer}
    at = depth(float_model)
    done = set()
    for tensor, (scale_name, zp_name) in activations(m).items():
        if tensor not in observed or scale_name in done:
            continue
        done.add(scale_name)  # a scale a MaxPool/Squeeze shares with its input is set by the input, as ORT does
        if numpy_helper.to_array(inits[zp_name]).dtype != np.uint8:
            continue  # only the uint8 activations this exporter asks for
        o = observed[tensor]
        lo, hi = min(o.lo, 0.0), max(o.hi, 0.0)
        if pct is not None and at.get(tensor, 0.0) >= start:
            lo, hi = ranges.clipped(o, pct)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        zp = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
        inits[scale_name].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array(np.array(zp, np.uint8), zp_name))
