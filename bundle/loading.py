"""Loading and resampling a study however it is given: a list of modality files, one of them, or a 4-D NIfTI.

Both transforms are MONAI's with one change each, needed where MONAI Label runs the bundle's preprocessing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import LoadImaged, Spacingd

from bundle.datalist import modality_files

__all__ = ["LoadStudyd", "StudySpacingd"]


class LoadStudyd(LoadImaged):
    """``LoadImaged`` that first expands a study given by one modality file to its four modality files.

    MONAI Label hands the bundle one datastore file per study and wraps the config's ``LoadImaged`` (and its
    subclasses) in its own loader, which calls it with that path: the expansion must happen here, inside the loader.
    The image's files, as loaded, are also stored under ``files_key`` so that later errors can name the file.

    Args:
        study_key: the key holding the study (the first of ``keys`` by default); other keys load as they are.
        files_key: where the study's file list is kept; None to keep nothing.
        other arguments: as ``monai.transforms.LoadImaged``.
    """

    def __init__(self, keys: Any, study_key: str | None = None, files_key: str | None = "input_files", **kwargs: Any):
        super().__init__(keys, **kwargs)
        self.study_key = study_key or self.keys[0]
        self.files_key = files_key

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.study_key] = modality_files(d[self.study_key])
        if self.files_key:
            d[self.files_key] = d[self.study_key]
        return super().__call__(d, reader)


class StudySpacingd(Spacingd):
    """``Spacingd`` that tolerates non-metadata entries named ``<key>_*`` in the data.

    MONAI's ``Spacingd`` updates every ``<key>_*`` entry as a metadata dictionary; MONAI Label puts the study's path
    under ``image_path``. Such entries are set aside during the call and put back.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d
