"""Voxel-level checks of loaded cases, naming the file at fault: the header checks live in ``bundle.datalist``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckImaged"]

MODALITY_NAMES = ("T1", "T1ce", "T2", "FLAIR")


class CheckImaged(MapTransform):
    """Stops on NaN or infinite voxels, and on an all-zero image channel, with an error naming the file.

    Place it right after ``LoadImaged``. ``files_key`` holds the paths the image was loaded from (copy them with
    ``CopyItemsd`` before loading): one file per channel, or one 4-D file for all channels (MSD), whose channels
    are named by ``channel_order`` (the stored channel of T1, T1ce, T2 and FLAIR, as in the datalist: MSD stores
    FLAIR first). An all-zero channel would make the per-modality z-score undefined; an all-zero label map is a
    valid case without tumour.
    """

    def __init__(
        self,
        keys: KeysCollection,
        files_key: str = "input_files",
        allow_zero_keys: KeysCollection = ("label",),
        channel_order: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.files_key = files_key
        self.allow_zero_keys = {allow_zero_keys} if isinstance(allow_zero_keys, str) else set(allow_zero_keys)
        if sorted(channel_order) != list(range(len(MODALITY_NAMES))):
            raise ValueError(f"channel_order must be a permutation of [0, 1, 2, 3], got {list(channel_order)!r}")
        #: the modality of each stored channel
        self.stored_names = {stored: MODALITY_NAMES[m] for m, stored in enumerate(channel_order)}

    def _file_of(self, data: Mapping, key: Hashable, channel: int) -> str:
        files = data.get(self.files_key) if key == "image" else None
        if isinstance(files, (list, tuple)) and len(files) == data[key].shape[0]:
            return str(files[channel])
        source = getattr(data[key], "meta", {}).get("filename_or_obj", f"<{key}>")
        name = self.stored_names.get(channel, channel) if key == "image" else channel
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
