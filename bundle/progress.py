"""Progress bars for the bundle's engines, silenced under CI or with ``--quiet true``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar"]


class LossProgressBar(ProgressBar):
    """ignite's ``ProgressBar`` over each epoch's iterations (cases, for evaluators), with optional losses.

    MONAI attaches handlers with ``handler.attach(engine)`` alone, so ``output_transform`` (returning the losses to
    show) is given here instead; None shows the progress alone.
    """

    def __init__(self, output_transform: Callable[[Any], dict[str, float]] | None = None, **tqdm_kwargs: Any) -> None:
        super().__init__(**tqdm_kwargs)
        self.output_transform = output_transform

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self.output_transform is not None:
            kwargs.setdefault("output_transform", self.output_transform)
        super().attach(engine, *args, **kwargs)
