"""Where the model runs when nobody says: the GPU when torch sees one, else the CPU."""

from __future__ import annotations

import torch

AUTO = "auto"  # what configuration files write for "the default device"


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested` as a torch.device; None or "auto" give cuda when it is available, else cpu."""
    if requested is None or requested == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
