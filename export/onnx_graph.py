"""Graph surgery on ONNX Runtime's QDQ models: keep chosen nodes computing in float.

`nodes_to_exclude` in ONNX Runtime's quantizer is not enough for that: an excluded node still sits
between a DequantizeLinear on its input and a QuantizeLinear on its output, and ONNX Runtime's
WeightBiasQuantization optimizer (run at load time, every optimization level above "disabled")
quantizes its float weights itself, per tensor. For a depthwise convolution that is ruinous
(docs/export.md; a test checks a depthwise conv kept float stays float).
So a node kept float gets its float weights back and loses the Q/DQ pair on its output (and on the
output of the Relu/Clip after it, which the quantizer must keep as a node for that: the
`QDQKeepRemovableActivations` option). Its neighbours read and write float there.
"""
import copy


def float_nodes(qdq, float_model, names):
    """A copy of the QDQ model with the named nodes computing in float: float weights and bias from
    float_model, and no Q/DQ pair on their outputs (nor after the Relu/Clip that follows them, nor
    after any node without weights that then reads only float tensors)."""
    m = copy.deepcopy(qdq)
    g = m.graph
    names = set(names)
    have = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    bypass = _float_weights(g, float_model, names, have, producer, consumers)
    # a node without weights that reads only float tensors (a pool, a Squeeze, the softmax after
    # float ops) computes in float too: quantizing its output again would only round it
    for n in g.node:
        if n.name in names or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = [_source(i, producer) for i in n.input if i and i not in have]
        if sources and all(src in bypass for src in sources):
            bypass.update(n.output)
    _drop_qdq(g, bypass, consumers)
    return m


def _float_weights(g, float_model, names, have, producer, consumers):
    """Give the named nodes their float weights and bias back; returns the tensors that stay float:
    their outputs, and those of the Relu/Clip fused with them."""
    float_nodes_by_name = {n.name: n for n in float_model.graph.node}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    bypass = set()
    for n in g.node:
        if n.name not in names:
            continue
        src = float_nodes_by_name[n.name]
        for k, inp in enumerate(n.input):
            p = producer.get(inp)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in have:  # a quantized weight or bias
                fname = src.input[k] + "_float"  # the DQ's output may carry the original name
                if fname not in have:
                    init = copy.deepcopy(float_inits[src.input[k]])
                    init.name = fname
                    g.initializer.append(init)
                    have.add(fname)
                n.input[k] = fname
        for out in n.output:
            bypass.add(out)
            for c in _readers(out, consumers):
                if c.op_type in ("Relu", "Clip"):  # the activation fused with it: its output stays float too
                    bypass.update(c.output)
    return bypass


def _drop_qdq(g, bypass, consumers):
    """Remove the Q/DQ pairs on the bypassed tensors (their readers read the float tensor), then the
    dequantize nodes and weights nothing reads any more."""
    drop = []
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in bypass]:
        for dq in [n for n in consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]:
            for n in consumers.get(dq.output[0], []):
                for k, inp in enumerate(n.input):
                    if inp == dq.output[0]:
                        n.input[k] = q.input[0]
            for o in g.output:
                if o.name == dq.output[0]:
                    o.name = q.input[0]
            drop.append(dq)
        drop.append(q)
    for n in drop:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
        g.node.remove(dq)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def _source(tensor, producer):
    """The float tensor behind a DequantizeLinear(QuantizeLinear(x)) pair, else the tensor itself."""
    dq = producer.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return tensor


def _readers(tensor, consumers):
    """The nodes reading a tensor, looking through a Q/DQ pair on it."""
    out = []
    for c in consumers.get(tensor, []):
        if c.op_type == "QuantizeLinear":
            for dq in consumers.get(c.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    out += consumers.get(dq.output[0], [])
        else:
            out.append(c)
    return out
