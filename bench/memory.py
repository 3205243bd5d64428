"""Peak tensor memory of a piece of code on CPU, replayed from torch's own allocation records.

torch keeps no allocator statistics for CPU (torch.cuda.max_memory_allocated has no CPU twin),
and process RSS mixes in the C allocator's caching and the interpreter. The profiler's [memory]
events list every allocation and free of tensor storage in order; their running sum is the bytes
held by tensors, and its maximum is the peak above what was live when the code started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def peak_tensor_bytes(code: Callable[[], Any]) -> int:
    """Highest number of tensor bytes allocated by `code` and alive at once (frees of older tensors lower it)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        code()
    events = [e for e in recording.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak
