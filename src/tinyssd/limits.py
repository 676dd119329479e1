"""Bounds on what a file may ask of tinyssd, shared by the data readers, checkpoints and exports.

Data sets, checkpoints and exported models come from elsewhere; each number they hold that
sizes an allocation is checked against these bounds before anything is allocated, with a
message that names the file and the bound. Each bound is far above any real use.
"""

from __future__ import annotations

__all__ = ["MAX_CLASSES", "MAX_EXPORT_BATCH", "MAX_IMAGE_SIZE", "MAX_OBJECTS_PER_PICTURE"]

# LVIS, the largest common detection vocabulary, has 1203 classes.
MAX_CLASSES = 10_000
# Training compares every anchor with every object of a picture (5444 anchors at 256 pixels):
# 1000 objects make a 22 MB IoU matrix per picture. Crowded data sets (SKU-110K) stay below.
MAX_OBJECTS_PER_PICTURE = 1000
# The square model input: 2048 pixels is 64x the chapter's 256-pixel anchors' memory.
MAX_IMAGE_SIZE = 2048
# A fixed-batch export takes exactly this many pictures at once at most.
MAX_EXPORT_BATCH = 256
