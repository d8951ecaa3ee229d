"""Scheduler configs as diffusers keeps them: ``config``, ``from_config``, ``save_pretrained`` /
``from_pretrained`` and ``load_config``.

A config is the constructor's diffusers arguments, a read-only mapping that also answers attribute
access (``scheduler.config.num_train_timesteps``), as diffusers' ``FrozenDict``. On disk it is
``scheduler_config.json`` in a folder, written as diffusers writes it (sorted keys, indent 2,
``_class_name`` and ``_diffusers_version``), so diffusers' own classes read ours and ours read
theirs. Keys a class does not take (another scheduler's, diffusers' ``_``-prefixed bookkeeping) are
ignored, as diffusers ignores them; the library's own options (``seed``, ``device``,
``return_pred_original``) are arguments of ``from_config`` / ``from_pretrained``, never stored.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["CONFIG_NAME", "ConfigMixin", "SchedulerConfig"]

CONFIG_NAME = "scheduler_config.json"
# Options of ours that are not diffusers' configuration: accepted by from_config, never written.
RUNTIME_OPTIONS = ("seed", "return_pred_original", "device")
# The diffusers release whose argument lists these classes follow (written as _diffusers_version).
DIFFUSERS_VERSION = "0.42.1"

_S = TypeVar("_S", bound="ConfigMixin")


class SchedulerConfig(dict[str, Any]):
    """A read-only dict of a scheduler's arguments with attribute access, as diffusers' FrozenDict
    (a dict, so diffusers' ``from_config`` takes it)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no {name!r}") from None

    def _read_only(self, *_: Any, **__: Any) -> Any:
        raise TypeError("the scheduler config is read-only: build a new scheduler with from_config(config, key=value)")

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:  # copy and pickle rebuild it whole
        return SchedulerConfig, (dict(self),)

    __setattr__ = __setitem__ = __delitem__ = _read_only
    update = pop = popitem = setdefault = clear = __ior__ = _read_only


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class ConfigMixin:
    """``config`` / ``from_config`` / ``save_pretrained`` / ``from_pretrained`` for a scheduler class
    whose ``__init__`` keyword arguments are diffusers' plus ``RUNTIME_OPTIONS``."""

    config_name = CONFIG_NAME
    config: SchedulerConfig

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The constructor's diffusers arguments (the keys of ``config``)."""
        params = inspect.signature(cls.__init__).parameters
        return tuple(k for k in params if k != "self" and k not in RUNTIME_OPTIONS
                     and params[k].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def _register_config(self, values: Mapping[str, Any]) -> None:
        self.config = SchedulerConfig({k: values[k] for k in self.config_keys()})

    @classmethod
    def from_config(cls: type[_S], config: Mapping[str, Any] | None = None, **kwargs: Any) -> _S:
        """A scheduler from a config (ours, diffusers' ``scheduler.config`` or a plain dict);
        ``kwargs`` override its values or pass our options (seed, device, return_pred_original).
        Keys this class does not take are ignored, as diffusers does."""
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (a scheduler's .config or a dict), got {type(config).__name__}")
        keys = set(cls.config_keys()) | set(RUNTIME_OPTIONS)
        unknown = sorted(k for k in kwargs if k not in keys)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_config got unexpected argument(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(keys))}")
        args = {k: v for k, v in (config or {}).items() if k in keys and k not in RUNTIME_OPTIONS}
        args.update(kwargs)
        return cls(**args)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike[str],
                    subfolder: str | None = None) -> dict[str, Any]:
        """The JSON dict from ``<folder>[/subfolder]/scheduler_config.json`` (or that file itself).
        Only local folders: nothing is downloaded."""
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            path = path / subfolder
        if path.is_dir():
            path = path / cls.config_name
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_model_name_or_path={str(pretrained_model_name_or_path)!r} "
                                    f"(subfolder={subfolder!r}): no {cls.config_name} there; this library reads "
                                    "local folders only (download with huggingface_hub first)")
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        if not isinstance(out, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(out).__name__}")
        return out

    @classmethod
    def from_pretrained(cls: type[_S], pretrained_model_name_or_path: str | os.PathLike[str],
                        subfolder: str | None = None, **kwargs: Any) -> _S:
        """``from_config(load_config(folder, subfolder), **kwargs)``: a local folder as diffusers saves it."""
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder), **kwargs)

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, indent 2, ``_class_name`` and ``_diffusers_version``."""
        out = {k: _jsonable(v) for k, v in self.config.items()}
        out["_class_name"] = type(self).__name__
        out["_diffusers_version"] = DIFFUSERS_VERSION
        return json.dumps(out, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``save_directory/scheduler_config.json`` (the folder is created); returns the file's path."""
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory={str(save_directory)!r} is a file: give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_name
        path.write_text(self.to_json_string(), encoding="utf-8")
        return path

    def save_pretrained(self, save_directory: str | os.PathLike[str], **_: Any) -> Path:
        """diffusers' name for ``save_config`` (a pipeline's save_pretrained calls it with extra options)."""
        return self.save_config(save_directory)
