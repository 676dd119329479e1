"""Detection data set formats, each a small module behind :class:`tinyssd.data.datamodule.DetectionDataModule`.

* :mod:`~tinyssd.data.formats.banana` — the chapter's ``label.csv`` + ``images/`` (``data=banana``);
* :mod:`~tinyssd.data.formats.coco` — COCO instances JSON (``data=coco``);
* :mod:`~tinyssd.data.formats.voc` — Pascal VOC XML (``data=voc``);
* :mod:`~tinyssd.data.formats.yolo` — an ultralytics dataset YAML and ``class cx cy w h`` label files
  (``data=yolo``).

A new format is one module here (a :class:`~tinyssd.data.datamodule.DetectionDataModule` subclass that
implements ``read_split`` with an :class:`~tinyssd.data.index.IndexBuilder`) and one ``conf/data/`` file.
"""
