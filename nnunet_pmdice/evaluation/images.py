"""Reading test cases for figures: the image, its reference and the predictions, with nnU-Net's reader.

The reader is the one nnU-Net uses for the dataset (the one ``dataset.json`` names, else the one its
file ending selects), and the channel files of a case are found as nnU-Net finds them
(``<case>_<4-digit channel><file_ending>``), so every format nnU-Net reads can be shown.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Tuple

import numpy as np


class CaseImageReader:
    """Reads cases of one nnU-Net raw dataset for figures.

    Args:
        raw_dataset: the dataset folder in ``nnUNet_raw`` (``dataset.json``, ``imagesTs``, ``labelsTs``).
        images: the image subfolder (default ``imagesTs``); references come from ``labels`` (``labelsTs``).

    Raises:
        FileNotFoundError: ``dataset.json`` or the reference folder is missing, or the latter holds no
            file with the dataset's ending.
    """

    def __init__(self, raw_dataset, images: str = "imagesTs", labels: str = "labelsTs"):
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

        self.raw = Path(raw_dataset)
        dj_file = self.raw / "dataset.json"
        if not dj_file.is_file():
            raise FileNotFoundError(f"{dj_file} does not exist")
        self.dataset_json = json.loads(dj_file.read_text())
        self.ending = self.dataset_json["file_ending"]
        self.images, self.labels = self.raw / images, self.raw / labels
        example = next(iter(sorted(self.labels.glob("*" + self.ending))), None) if self.labels.is_dir() else None
        if example is None:
            raise FileNotFoundError(f"no reference file ending in {self.ending!r} in {self.labels}")
        self.reader = determine_reader_writer_from_dataset_json(self.dataset_json, str(example), verbose=False)()

    def image(self, case: str) -> np.ndarray:
        """The case's image, ``(C, *spatial)``, all channels (an RGB PNG is one file holding three)."""
        from nnunetv2.utilities.utils import create_paths_fn

        names = sorted(p.name for p in self.images.iterdir())
        files = create_paths_fn(str(self.images), names, self.ending, case)
        if not files:
            raise FileNotFoundError(f"no image of case {case!r} ({case}_XXXX{self.ending}) in {self.images}")
        return self.reader.read_images(files)[0]

    def segmentation(self, folder, case: str) -> np.ndarray:
        """The label map ``<folder>/<case><file_ending>`` (a reference or a prediction), ``(1, *spatial)``."""
        path = Path(folder) / f"{case}{self.ending}"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return self.reader.read_seg(str(path))[0]

    def case(self, case: str, prediction_folders: Mapping[str, Path]) -> Tuple[np.ndarray, np.ndarray,
                                                                                  Dict[str, np.ndarray]]:
        """``(image, reference, {name: prediction})`` of one case; predictions from ``{name: folder}``."""
        return (self.image(case), self.segmentation(self.labels, case),
                {name: self.segmentation(folder, case) for name, folder in prediction_folders.items()})
