"""Triton kernels for the CUDA path, and what their launches share.

Programmatic dependent launch (PDL, sm_90 and later): a kernel launched with it may start while the
kernel before it in the stream is still finishing, once every program of that one has signalled
(`tl.extra.cuda.gdc_launch_dependents`, which the kernels here do first thing). It must then wait
(`gdc_wait`) before it touches anything the kernels before it write: the kernels here wait before
their first load of activations, so only constant data (weights) is read ahead. A decode step is
about a thousand short kernels; each hides its launch and ramp-up behind the tail of the last.
"""

from __future__ import annotations

import functools
import os

import torch


def interpreted() -> bool:
    """Triton's CPU interpreter runs the kernels (tests): no PTX, no PDL."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl(device: torch.device) -> bool:
    """Launch with programmatic dependent launch on this device? TAMESHI_PDL=0 turns it off."""
    if device.type != "cuda" or interpreted() or os.environ.get("TAMESHI_PDL", "1") == "0":
        return False
    return _sm90(device.index if device.index is not None else torch.cuda.current_device())
