"""Dictionary transforms for BraTS labels: data-set label values <-> the model's classes, classes -> regions."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from bundle.datalist import case_id_from_path
from bundle.labels import REGIONS, label_values

__all__ = ["LabelsToClassesd", "ClassesToLabelsd", "ClassesToRegionsd", "class_map_to_regions", "case_name_formatter"]


def _source_name(data: MetaTensor | torch.Tensor | np.ndarray) -> str:
    """The file a tensor was loaded from, for error messages."""
    meta = getattr(data, "meta", {})
    return str(meta.get("filename_or_obj", "<unknown file>"))


class LabelsToClassesd(MapTransform):
    """Maps a label map's data-set values (e.g. BraTS 2021's 0, 1, 2, 4) to the classes 0..3.

    A value outside ``label_convention`` is an error naming the file and the value, never silently dropped.
    """

    def __init__(self, keys: KeysCollection, label_convention: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_convention = label_convention
        self.values = label_values(label_convention)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            found = torch.unique(torch.as_tensor(label)).tolist()
            unknown = [int(v) if float(v).is_integer() else v for v in found if v not in self.values]
            if unknown:
                raise ValueError(
                    f"{_source_name(label)}: label values {unknown} are not in the {self.label_convention} "
                    f"convention {self.values}."
                )
            classes = torch.zeros_like(torch.as_tensor(label), dtype=torch.uint8)
            for cls, value in enumerate(self.values):
                classes[torch.as_tensor(label) == value] = cls
            d[key] = MetaTensor(classes, meta=label.meta) if isinstance(label, MetaTensor) else classes
        return d


class ClassesToLabelsd(MapTransform):
    """Maps a class-index map (0..3) to ``label_convention``'s label values, for writing predictions."""

    def __init__(self, keys: KeysCollection, label_convention: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.values = label_values(label_convention)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            lookup = torch.as_tensor(self.values, dtype=torch.uint8, device=d[key].device)
            d[key] = lookup[torch.as_tensor(d[key]).long()]  # indexing keeps MetaTensor metadata
        return d


def class_map_to_regions(classes: torch.Tensor) -> torch.Tensor:
    """``(1, *spatial)`` class-index map -> ``(3, *spatial)`` float masks of the regions ET, TC, WT."""
    if classes.shape[0] != 1:
        raise ValueError(f"expected a one-channel class-index map, got shape {tuple(classes.shape)}.")
    masks = [torch.isin(classes[0], torch.as_tensor(members, device=classes.device)) for members in REGIONS.values()]
    return torch.stack(masks).float()


class ClassesToRegionsd(MapTransform):
    """Turns class-index maps into the three BraTS region masks ET, TC, WT (channel-first, float)."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = class_map_to_regions(d[key])
        return d


def case_name_formatter(metadict: dict, saver: object) -> dict[str, str]:
    """``SaveImaged`` name formatter: outputs are named by case id, ``<output_dir>/<case_id>.nii.gz``."""
    return {"subject": case_id_from_path(metadict["filename_or_obj"])}
