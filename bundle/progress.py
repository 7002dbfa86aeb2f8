"""Progress bars for the bundle's engines, silenced under CI or with ``--quiet true``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar"]


class LossProgressBar(ProgressBar):
    """ignite's ``ProgressBar`` over each epoch's iterations, showing the losses ``output_transform`` returns.

    MONAI attaches train handlers with ``handler.attach(engine)`` alone, so the transform is given here instead.
    """

    def __init__(self, output_transform: Callable[[Any], dict[str, float]], **tqdm_kwargs: Any) -> None:
        super().__init__(**tqdm_kwargs)
        self.output_transform = output_transform

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self.output_transform)
        super().attach(engine, *args, **kwargs)
