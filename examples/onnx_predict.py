"""Run a tinyssd ONNX export with ONNX Runtime, NumPy and Pillow only (no PyTorch, no tinyssd).

    python examples/onnx_predict.py MODEL.onnx PICTURE [THRESHOLD]

Prints one line per detection: class, score and the box in the picture's pixels (x1 y1 x2 y2).
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

model, picture_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model)
meta = json.loads(session.get_modelmeta().custom_metadata_map["tinyssd"])
threshold = float(sys.argv[3]) if len(sys.argv) > 3 else meta["display_threshold"]

picture = Image.open(picture_path).convert("RGB")
size = meta["image_size"]
if meta["resize"] == "stretch":  # letterbox: scale to fit, centre on a gray (114) square
    scale_x, scale_y, left, top = size / picture.width, size / picture.height, 0.0, 0.0
    canvas = picture.resize((size, size), Image.BILINEAR)
else:
    scale_x = scale_y = min(size / picture.width, size / picture.height)
    width, height = round(picture.width * scale_x), round(picture.height * scale_y)
    left, top = (size - width) // 2, (size - height) // 2
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(picture.resize((width, height), Image.BILINEAR), (left, top))
images = np.asarray(canvas).transpose(2, 0, 1)[None]  # (1, 3, S, S) uint8
if meta["input_dtype"] == "float32":
    images = images.astype(np.float32) / 255

boxes, scores, labels, count = session.run(None, {"images": images})
for box, score, label in zip(boxes[0, : count[0]], scores[0, : count[0]], labels[0, : count[0]], strict=True):
    if score < threshold:
        continue
    x1, y1, x2, y2 = box * size - [left, top, left, top]  # canvas pixels, then the picture's
    x1, x2 = np.clip([x1 / scale_x, x2 / scale_x], 0, picture.width)
    y1, y2 = np.clip([y1 / scale_y, y2 / scale_y], 0, picture.height)
    print(meta["class_names"][label], f"{score:.4f}", *(f"{v:.2f}" for v in (x1, y1, x2, y2)))
