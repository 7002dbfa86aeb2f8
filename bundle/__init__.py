"""Vox2Vox MONAI bundle components: networks, losses, trainer, transforms, data and metrics."""
