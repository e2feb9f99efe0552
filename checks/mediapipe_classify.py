"""MediaPipe Tasks' ImageClassifier on our .tflite files, as an Android, iOS or web app would run them.

Run it with a Python that has mediapipe (its own venv: its absl pin conflicts with this project's), by path:

    python checks/mediapipe_classify.py MODEL.tflite PIXELS.npy OUT.json

PIXELS.npy: uint8 RGB images already at the model's input size. OUT.json: every category per image, best
first. It imports nothing from this project; tests/test_mobile.py runs it.
"""
import json
import sys

import numpy as np
import mediapipe as mp
from mediapipe.tasks import python as mp_tasks
from mediapipe.tasks.python import vision

model, pixels, out = sys.argv[1:4]
options = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=model), max_results=-1)
results = []
with vision.ImageClassifier.create_from_options(options) as clf:
    for img in np.load(pixels):
        res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
        cats = res.classifications[0].categories
        results.append([{"index": c.index, "label": c.category_name, "score": c.score} for c in cats])
json.dump(results, open(out, "w"))
