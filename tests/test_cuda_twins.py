"""CPU twins of CUDA-only branches: the code that a GPU runs, executed here with a CPU stand-in.

RAFT's mixed precision is fp16 autocast on CUDA; the same code runs under CPU bf16 autocast when the
estimator is built with ``autocast_device="cpu"``, so these tests see which operations it lowers.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtransfer.diffusion.stable_diffusion import load_stable_diffusion
from mtransfer.estimators import load_named_estimator
from mtransfer.estimators.raft import RaftEstimator, source_cached
from mtransfer.speed import SWITCHES, fast_path, parse_fast_path


class OpDtypes(TorchDispatchMode):
    """Records (operator name, output dtype) of every aten call made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.calls.append((func.overloadpacket.__name__, out.dtype))
        return out

    def dtypes(self, op: str) -> set[torch.dtype]:
        return {dtype for name, dtype in self.calls if name == op}


def _cpu_mixed_raft() -> RaftEstimator:
    plain = load_named_estimator("raft-small", weights="random", iterations=2)
    return RaftEstimator(plain.model, plain.name, plain.iterations, autocast=True,
                         autocast_device="cpu", autocast_dtype=torch.bfloat16)


def _ops(estimator, source: torch.Tensor, target: torch.Tensor) -> OpDtypes:
    with OpDtypes() as record:
        flow = estimator(source, target)
    assert flow.dtype == torch.float32
    return record


@pytest.mark.parametrize("wrap", ["plain", "source_cached"])
def test_raft_mixed_precision_lowers_the_network_and_keeps_the_correlation_fp32(wrap: str) -> None:
    """RAFT's rule (the original code's autocast): convolutions in reduced precision, the correlation
    volume (a batched matrix product of the two feature maps) and its lookup in fp32. The source-cached
    RAFT of the speed switches must run the very same precision (it once dropped ``autocast``)."""
    torch.manual_seed(0)
    source, target = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    estimator = _cpu_mixed_raft()
    if wrap == "source_cached":
        estimator = source_cached(estimator)
    record = _ops(estimator, source, target)
    assert record.dtypes("convolution") == {torch.bfloat16}
    assert record.dtypes("bmm") == {torch.float32}  # the all-pairs correlation
    assert torch.float32 in record.dtypes("grid_sampler_2d") and torch.bfloat16 not in record.dtypes("grid_sampler_2d")


def test_without_autocast_everything_is_fp32() -> None:
    """The check above can fail: the same RAFT without mixed precision runs no bf16 convolution."""
    estimator = _cpu_mixed_raft()
    estimator.autocast = False
    record = _ops(estimator, torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    assert record.dtypes("convolution") == {torch.float32}


def _innermost_raft(estimator) -> RaftEstimator:
    """Down through the speed switches' wrappers (autocast wrapper, ``torch.compile``) to the RAFT."""
    while not isinstance(estimator, RaftEstimator):
        estimator = getattr(estimator, "inner", None) or getattr(estimator, "_orig_mod")
    return estimator


@pytest.mark.parametrize("spec", [name for name in SWITCHES] + ["sdpa+channels-last+cache-source", "cache-source+compile"])
def test_every_estimator_the_speed_switches_build_keeps_rafts_settings(spec: str) -> None:
    """``paper`` sets RAFT's own mixed precision and recommends ``sdpa+channels-last+cache-source``: no
    switch may rebuild RAFT without it (nor with other iterations)."""
    backend = load_stable_diffusion("tiny")
    original = _cpu_mixed_raft()
    with fast_path(backend, original, parse_fast_path(spec)) as (_, fast):
        raft = _innermost_raft(fast)
        assert (raft.autocast, raft.autocast_device, raft.autocast_dtype, raft.iterations, raft.name) == (
            True, "cpu", torch.bfloat16, 2, "raft-small"
        )
