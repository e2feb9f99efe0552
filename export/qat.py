"""Quantization-aware training with tensorflow-model-optimization.

Layers tfmot's default 8-bit scheme supports are annotated; any others stay float in the
QAT graph and are calibrated by the converter like a post-training int8 model.
"""
import time

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

from train.pipeline import dataset


def annotate(model):
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    q = tfmot.quantization.keras

    def wrap(layer):
        return q.quantize_annotate_layer(layer) if registry.supports(layer) else layer

    annotated = keras.models.clone_model(model, clone_function=wrap)
    annotated.set_weights(model.get_weights())
    skipped = sorted({type(l).__name__ for l in model.layers
                      if not registry.supports(l) and not isinstance(l, keras.layers.InputLayer)})
    return annotated, skipped


def quantization_aware_model(ctx):
    """The run's model with fake-quant nodes, fine-tuned a few epochs on its training split."""
    t0 = time.time()
    cfg = ctx.config
    annotated, skipped = annotate(ctx.model)
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    qat.compile(optimizer=keras.optimizers.Adam(ctx.qat_lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    info = {"qat_epochs": ctx.qat_epochs, "qat_lr": ctx.qat_lr, "qat_float_layers": skipped}
    if ctx.qat_epochs > 0:
        index = {c: i for i, c in enumerate(ctx.class_names)}
        train_ds = dataset(ctx.data_root, ctx.subset("train"), index, cfg["image_size"], cfg["batch_size"],
                           training=True, seed=cfg["seed"])
        val = ctx.subset("val")
        val_ds = dataset(ctx.data_root, val, index, cfg["image_size"], cfg["batch_size"]) if val else None
        weights = {index[c]: w for c, w in cfg["class_weights"].items()} if cfg.get("class_weights") else None
        ctx.log(f"  quantization-aware fine-tuning: {ctx.qat_epochs} epoch(s) on {len(ctx.subset('train'))} images")
        hist = qat.fit(train_ds, validation_data=val_ds, epochs=ctx.qat_epochs, class_weight=weights, verbose=2)
        info["qat_history"] = {k: [float(x) for x in v] for k, v in hist.history.items()}
    info["qat_seconds"] = round(time.time() - t0, 1)
    return qat, info
