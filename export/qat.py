"""Quantization-aware training with tensorflow-model-optimization.

Layers tfmot's default 8-bit scheme supports are annotated (BatchNormalization too, so it is
folded into the convolution before it); any others stay float in the QAT graph and are
calibrated by the converter like a post-training int8 model.

tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay 0.999, so a
short fine-tune never reaches the true ranges: our raw 0..255 input would be clipped to 6 and
the QAT model would start out predicting one class. The ranges are therefore set from the
float model's activations on the calibration images first, as post-training quantization does.
"""
import time

import numpy as np

from runlib.tf_setup import import_tensorflow

import_tensorflow()  # quietly, before tfmot loads it
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry  # noqa: E402

from edge_runtime.preprocess import fit_of  # noqa: E402
from train.data import cache_in_memory  # noqa: E402
from train.pipeline import Images, dataset  # noqa: E402

from .stopwatch import Stopwatch  # noqa: E402


def annotate(model, fold_bn=True):
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    q = tfmot.quantization.keras

    def wrap(layer):
        ok = registry.supports(layer) or (fold_bn and isinstance(layer, keras.layers.BatchNormalization))
        return q.quantize_annotate_layer(layer) if ok else layer

    annotated = keras.models.clone_model(model, clone_function=wrap)
    annotated.set_weights(model.get_weights())
    skipped = sorted({type(l).__name__ for l in model.layers if not registry.supports(l)
                      and not isinstance(l, (keras.layers.InputLayer, keras.layers.BatchNormalization))})
    return annotated, skipped


def quantize(model):
    q = tfmot.quantization.keras
    for fold_bn in (True, False):  # a BatchNormalization that follows no convolution cannot be folded
        annotated, skipped = annotate(model, fold_bn)
        try:
            with q.quantize_scope():
                return q.quantize_apply(annotated), skipped
        except (ValueError, RuntimeError):
            if not fold_bn:
                raise


def _var(layer, suffix):
    return next((w for w in layer.weights if w.name.split("/")[-1].split(":")[0].endswith(suffix)), None)


def calibrate_ranges(qat, model, pixels, batch=16, input_range=(0.0, 255.0)):
    """Set every activation range of the QAT model from the float model's tensors on `pixels`."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

    probes = []  # (min var, max var, float tensor, layer to apply linearly or None)
    for layer in qat.layers:
        if isinstance(layer, QuantizeLayer):  # the input quantizer: the pixel contract, 0..255
            _var(layer, "_min").assign(input_range[0])
            _var(layer, "_max").assign(input_range[1])
            continue
        if not layer.name.startswith("quant_"):
            continue
        try:
            src = model.get_layer(layer.name[len("quant_"):])
        except ValueError:
            continue
        for kind in ("output", "post_activation", "pre_activation"):
            lo, hi = _var(layer, f"{kind}_min"), _var(layer, f"{kind}_max")
            if lo is None or hi is None:
                continue
            if kind == "pre_activation":  # e.g. the logits before softmax: the layer without its activation
                cfg = dict(src.get_config(), activation="linear", name=f"{src.name}_linear")
                linear = type(src).from_config(cfg)
                linear.build(src.input_shape)
                linear.set_weights(src.get_weights())
                probes.append((lo, hi, src.input, linear))
            else:
                probes.append((lo, hi, src.output, None))
    if not probes:
        return 0
    from runlib.tf_setup import import_tensorflow
    tf = import_tensorflow()

    # every tensor's min and max reduced in the graph: only two numbers per tensor leave it, where
    # fetching the activations themselves to numpy took most of this step's time on ResNet-50
    outputs = [p[2] if p[3] is None else p[3](p[2]) for p in probes]
    probe = keras.Model(model.input, outputs)
    extremes = tf.function(lambda x: [tf.stack([tf.reduce_min(y), tf.reduce_max(y)]) for y in probe(x, training=False)])
    lows = np.full(len(probes), np.inf, np.float32)
    highs = np.full(len(probes), -np.inf, np.float32)
    for i in range(0, len(pixels), batch):
        for j, mm in enumerate(extremes(tf.constant(pixels[i : i + batch].astype(np.float32)))):
            lows[j], highs[j] = min(lows[j], float(mm[0])), max(highs[j], float(mm[1]))
    for (lo, hi, _, _), mn, mx in zip(probes, lows, highs):
        lo.assign(np.full(lo.shape, min(0.0, mn), np.float32))  # 0 must be representable
        hi.assign(np.full(hi.shape, max(0.0, mx, mn + 1e-3), np.float32))
    return len(probes)


def set_weight_ranges(qat, pixels):
    """tfmot takes weight ranges from the weights only in a training step; run one forward pass in
    training mode for that, then put back everything else it touched (BatchNorm statistics, EMAs)."""
    keep = [w for w in qat.weights if "kernel_m" not in w.name.split("/")[-1]]
    saved = [w.numpy() for w in keep]
    qat(pixels.astype(np.float32), training=True)
    for w, v in zip(keep, saved):
        w.assign(v)


# The distillation's temperature (Hinton et al., 2015), from the probabilities: softmax(log p / T). At T = 1 a
# teacher that is 0.99 sure leaves the student free to be 0.97 sure, which moves every decision near a high
# "unknown" threshold (the demo's is at a top probability of 0.987): T = 2 makes the loss see those differences.
DISTILL_T = 4.0


def soften(p, tf):
    z = tf.math.log(tf.clip_by_value(p, 1e-7, 1.0)) / DISTILL_T
    return tf.nn.softmax(z, axis=-1)


class Distilled(keras.Model):
    """The QAT model trained to agree with the float model (its teacher): the loss is `labels` times the
    cross-entropy with the labels plus (1 - labels) times the cross-entropy with the teacher's probabilities
    on the same (augmented) images. With labels 0 it learns only to answer as the float model does, which is
    what the parity gate asks of it; with 1 it is plain QAT, which fine-tunes on and drifts from its source.
    Batch-norm statistics are frozen in both (see _loss_and_agreement)."""

    def __init__(self, student, teacher, labels):
        super().__init__()
        self.student, self.teacher, self.labels = student, teacher, float(labels)
        self.teacher.trainable = False

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _loss_and_agreement(self, data, training):
        from runlib.tf_setup import import_tensorflow
        tf = import_tensorflow()

        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher = tf.stop_gradient(self.teacher(x, training=False))
        # The student runs in inference mode even while it learns: batch normalisation keeps the float model's
        # statistics (a small batch's own would move them away from the teacher), dropout is off as in the
        # teacher, and the calibrated activation ranges stay put; gradients still pass the fake-quant nodes.
        p = self.student(x, training=False)
        per = (self.labels * keras.losses.sparse_categorical_crossentropy(y, p)
               + (1.0 - self.labels) * DISTILL_T**2 * keras.losses.categorical_crossentropy(
                   soften(teacher, tf), soften(p, tf)))
        if weight is not None:
            per = per * tf.cast(tf.reshape(weight, tf.shape(per)), per.dtype)
        agree = tf.reduce_mean(tf.cast(tf.argmax(p, -1) == tf.argmax(teacher, -1), tf.float32))
        return tf.reduce_mean(per), agree

    def train_step(self, data):
        from runlib.tf_setup import import_tensorflow
        tf = import_tensorflow()

        with tf.GradientTape() as tape:
            loss, agree = self._loss_and_agreement(data, True)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss, "agreement": agree}

    def test_step(self, data):
        loss, agree = self._loss_and_agreement(data, False)
        return {"loss": loss, "agreement": agree}


def quantization_aware_model(ctx):
    """The run's model with fake-quant nodes, fine-tuned a few epochs on its training split to agree with
    the float model (Distilled), or on the labels alone (ctx.qat_labels 1)."""
    start, stages = time.time(), Stopwatch()
    cfg = ctx.config
    qat, skipped = quantize(ctx.model)
    stages.lap("fake-quant model")
    ranges = calibrate_ranges(qat, ctx.model, ctx.calibration)
    set_weight_ranges(qat, ctx.calibration[:8])
    stages.lap("ranges")
    ctx.log(f"  activation ranges of {ranges} tensors set from {len(ctx.calibration)} calibration images")
    trainer = Distilled(qat, ctx.model, ctx.qat_labels)
    trainer.compile(optimizer=keras.optimizers.Adam(ctx.qat_lr))
    info = {"qat_epochs": ctx.qat_epochs, "qat_lr": ctx.qat_lr, "qat_float_layers": skipped,
            "qat_labels": ctx.qat_labels, "qat_teacher": "the float Keras model" if ctx.qat_labels < 1 else None}
    if ctx.qat_epochs > 0:
        index = {c: i for i, c in enumerate(ctx.class_names)}
        val = ctx.subset("val")
        cache = cache_in_memory(len(ctx.subset("train")) + len(val), cfg["image_size"], cfg.get("cache_limit_gb", 2.0))
        train_ds = dataset(Images(ctx.data_root, ctx.subset("train"), index, cfg["image_size"], fit_of(cfg)),
                           cfg["batch_size"], training=True, seed=cfg["seed"], cache=cache)
        val_ds = (dataset(Images(ctx.data_root, val, index, cfg["image_size"], fit_of(cfg)), cfg["batch_size"],
                          cache=cache) if val else None)
        weights = {index[c]: w for c, w in cfg["class_weights"].items()} if cfg.get("class_weights") else None
        ctx.log(f"  quantization-aware fine-tuning: {ctx.qat_epochs} epoch(s) on {len(ctx.subset('train'))} images, "
                + ("the labels only" if ctx.qat_labels >= 1 else "distilled from the float model"
                   + (f" ({ctx.qat_labels:g} labels)" if ctx.qat_labels > 0 else "")))
        from train.callbacks import EpochProgress

        hist = trainer.fit(train_ds, validation_data=val_ds, epochs=ctx.qat_epochs, class_weight=weights, verbose=2,
                           callbacks=[EpochProgress("QAT", 0, ctx.qat_epochs, stage="export")])
        info["qat_history"] = {k: [float(x) for x in v] for k, v in hist.history.items()}
        set_weight_ranges(qat, ctx.calibration[:8])  # the student learnt in inference mode: ranges of its new weights
        stages.lap("fine-tune epochs")
    info["qat_seconds"] = round(time.time() - start, 1)
    info["stage_seconds"] = stages
    return qat, info
