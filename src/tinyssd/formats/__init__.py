"""Detection data set formats, each a small module behind :class:`tinyssd.datamodule.DetectionDataModule`.

* :mod:`~tinyssd.formats.banana` — the chapter's ``label.csv`` + ``images/`` (``data=banana``);
* :mod:`~tinyssd.formats.coco` — COCO instances JSON (``data=coco``);
* :mod:`~tinyssd.formats.voc` — Pascal VOC XML (``data=voc``);
* :mod:`~tinyssd.formats.yolo` — an ultralytics dataset YAML and ``class cx cy w h`` label files
  (``data=yolo``).

A new format is one module here (a :class:`~tinyssd.datamodule.DetectionDataModule` subclass that
implements ``read_split`` with an :class:`~tinyssd.data.IndexBuilder`) and one ``conf/data/`` file.
"""
