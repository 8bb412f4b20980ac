"""A progress bar updated once per compiled chunk of steps (never per step)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class ChunkProgress:
    """tqdm bar over ``total`` steps; ``update(n, **postfix)`` after each chunk of ``n`` steps."""

    def __init__(self, total: int, initial: int = 0, desc: str = "vigrad", enabled: bool = True):
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def update(self, steps: int, **postfix: float) -> None:
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ChunkProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
