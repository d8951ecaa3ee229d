"""Progress bars for the long loops (sampling, training, the demos): tqdm when it is installed
(the ``progress`` extra), otherwise a silent stand-in with the same three methods."""

from __future__ import annotations

from typing import Any


class NoBar:
    """What ``progress_bar`` returns without tqdm or when disabled: does nothing."""

    def update(self, n: int = 1) -> None:
        del n

    def set_postfix_str(self, text: str) -> None:
        del text

    def close(self) -> None:
        return None


def progress_bar(total: int | None, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` steps (None: a counter), or ``NoBar`` without tqdm or when disabled."""
    if not enabled:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar()
    return tqdm(total=total, desc=desc, position=0)
