"""Voxel-level checks of loaded cases, naming the file at fault: the header checks live in ``bundle.datalist``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckImaged"]

MODALITY_NAMES = ("T1", "T1ce", "T2", "FLAIR")


class CheckImaged(MapTransform):
    """Stops on NaN or infinite voxels, and on an all-zero image channel, with an error naming the file.

    Place it right after ``LoadImaged``. ``files_key`` holds the paths the image was loaded from (copy them with
    ``CopyItemsd`` before loading): one file per channel, or one 4-D file for all channels (MSD). An all-zero
    channel would make the per-modality z-score undefined; an all-zero label map is a valid case without tumour.
    """

    def __init__(
        self, keys: KeysCollection, files_key: str = "input_files", allow_zero_keys: KeysCollection = ("label",)
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.files_key = files_key
        self.allow_zero_keys = {allow_zero_keys} if isinstance(allow_zero_keys, str) else set(allow_zero_keys)

    def _file_of(self, data: Mapping, key: Hashable, channel: int) -> str:
        files = data.get(self.files_key) if key == "image" else None
        if isinstance(files, (list, tuple)) and len(files) == data[key].shape[0]:
            return str(files[channel])
        source = getattr(data[key], "meta", {}).get("filename_or_obj", f"<{key}>")
        name = MODALITY_NAMES[channel] if key == "image" and channel < len(MODALITY_NAMES) else channel
        return f"{source} (channel {name})"

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = torch.as_tensor(d[key])
            for channel in range(volume.shape[0]):
                values = volume[channel]
                bad = int((~torch.isfinite(values)).sum()) if values.is_floating_point() else 0
                if bad:
                    raise ValueError(f"{self._file_of(d, key, channel)}: {bad} voxels are NaN or infinite.")
                if key not in self.allow_zero_keys and not torch.any(values != 0):
                    raise ValueError(f"{self._file_of(d, key, channel)}: every voxel is zero: an empty image.")
        return d
