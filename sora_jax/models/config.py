"""Model configs from ml_collections: a frozen dataclass filled strictly from a config section."""

from __future__ import annotations

import dataclasses
from typing import Any


def fields_from_config(cls, cfg: Any, section: str) -> dict[str, Any]:
    """The keys of `cfg` (ConfigDict or dict) as dataclass kwargs; unknown keys are an error
    naming the section (`model`, `text`, ...) and the valid keys."""
    d = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f'unknown {section} config keys {unknown}; valid keys: {sorted(names)}.')
    return d
