"""The speed switches keep the math, and the benchmarks run end to end at tiny size on the CPU.

Nothing here times anything against a threshold: the smoke tests check the report's structure and that
its numbers are finite, positive and consistent with each other.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

REPOSITORY = Path(__file__).resolve().parent.parent

from benchmarks.flow_fps import measure_clip
from mtransfer.bench.guided_step import BenchSettings, run_benchmark
from mtransfer.bench.measure import PhaseTimer, peak_tflops
from mtransfer.bench.plot import plot_split
from mtransfer.diffusion import random_stable_diffusion
from mtransfer.errors import MtransferError
from mtransfer.estimators import load_named_estimator, load_raft
from mtransfer.files import read_json, write_json
from mtransfer.estimators.raft import SourceCachedEncoder, source_cached
from mtransfer.speed import FastPath, fast_path, parse_fast_path


@pytest.fixture(scope="module")
def report() -> dict:
    settings = BenchSettings(
        device="cpu",
        size=64,
        variants=("baseline", "cache-source"),
        repeats=1,
        warmup=0,
        model="tiny",
        raft="raft-small",
        raft_iterations=2,
        run_steps=1,
        run_recursions=2,
    )
    return run_benchmark(settings)


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_report_has_every_measurement_finite_and_consistent(report: dict) -> None:
    baseline, fast = report["variants"]
    assert [v["variant"] for v in report["variants"]] == ["baseline", "cache-source"]
    assert baseline["status"] == fast["status"] == "ok"
    assert any("CPU smoke run" in note for note in report["notes"])
    for v in (baseline, fast):
        assert all(_finite_positive(s) for s in v["step_s_runs"]) and _finite_positive(v["plain_cfg_s"])
        assert _finite_positive(v["step_s"]) and _finite_positive(v["run"]["s_per_pass"])
        assert _finite_positive(v["tflops"]) and v["peak_tflops"] is None and v["utilisation"] is None
        if Path("/proc/self/status").exists():  # the CPU measure reads the resident set size there
            assert isinstance(v["peak_memory_bytes"], int) and v["peak_memory_bytes"] >= 0
        else:
            assert v["peak_memory_bytes"] is None
        split = v["split_s"]
        for module in ("unet", "vae", "flow"):
            assert split[f"{module}_fwd"] > 0 and split[f"{module}_bwd"] > 0  # each phase was seen
        parts = sum(value for key, value in split.items() if key.endswith(("_fwd", "_bwd")))
        assert parts <= split["total"] * 1.001 and split["other"] >= 0  # measured parts fit in the measured whole
    # Caching RAFT's source side removes work from the flow component and nowhere else.
    assert fast["flops"] < baseline["flops"]
    assert fast["flops_by_component"]["flow"] < baseline["flops_by_component"]["flow"]
    assert fast["flops_by_component"]["unet"] == baseline["flops_by_component"]["unet"]
    assert "drift" not in baseline
    # Same math in fp32: the UNet's eps is bit-identical, the RAFT gradient equal up to summation order.
    assert fast["drift"]["cfg_eps"] == {"max_abs": 0.0, "relative": 0.0}
    # The latent after the short guided run (2 steps x 2 recursions) carries that order difference through
    # the gradient normalisation and clipping: 2.7e-4 measured on the 2-core CI machine, so 1e-3 bounds it.
    assert 0 <= fast["drift"]["eps"]["relative"] < 1e-4 and 0 <= fast["drift"]["latent"]["relative"] < 1e-3
    assert all(_finite_positive(report["once_per_edit_s"][key]) for key in report["once_per_edit_s"])


def test_report_round_trips_as_json_and_plots(report: dict, tmp_path: Path) -> None:
    write_json(tmp_path / "report.json", report)
    assert read_json(tmp_path / "report.json")["variants"][1]["flops"] == report["variants"][1]["flops"]
    from mtransfer.presets import available_pipelines

    rows = report["projections"]
    assert [row["preset"] for row in rows] == list(available_pipelines())  # every shipped preset, none failed
    for row in rows:
        assert "error" not in row, row
        if (row["steps"], row["recursions"]) != (500, 10):
            assert row["changes_math"]
        assert _finite_positive(row["baseline_edit_s"])
    assert not next(row for row in rows if row["preset"] == "paper")["changes_math"]
    path = plot_split(report, tmp_path / "split.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == 1000
        pixels = image.convert("RGB").getcolors(1 << 20)
    assert len(pixels) > 10  # bars in several colours, not a blank canvas


def test_parse_fast_path_combines_switches_and_rejects_bad_specs() -> None:
    switches = parse_fast_path("bf16+sdpa+cache-source")
    assert switches == FastPath(autocast="bf16", sdpa=True, cache_source=True)
    assert parse_fast_path(switches.label) == switches
    assert parse_fast_path("baseline") == FastPath() and FastPath().label == "baseline"
    fast = parse_fast_path("fast")  # a named set: its label lists the switches, and reads back the same
    assert fast != FastPath() and parse_fast_path(fast.label) == fast and "fast" not in fast.label
    with pytest.raises(MtransferError, match="unknown speed switch 'turbo'"):
        parse_fast_path("sdpa+turbo")
    with pytest.raises(MtransferError, match="disagree about autocast"):
        parse_fast_path("bf16+fp16")


def test_source_cached_raft_gives_raft_flow_and_gradient_and_reuses_the_source() -> None:
    torch.manual_seed(0)
    raft = load_raft("raft-small", weights="random", iterations=3)
    cached = source_cached(raft)
    assert isinstance(cached.model.context_encoder, SourceCachedEncoder)
    assert raft.model.context_encoder is cached.model.context_encoder.encoder  # shared, not modified
    calls = []
    raft.model.context_encoder.register_forward_hook(lambda *args: calls.append(1))
    source = torch.rand(1, 3, 40, 48)
    for seed in (1, 2):
        target = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
        expected = raft(source, target)
        (expected_grad,) = torch.autograd.grad(expected.square().mean(), target)
        got = cached(source, target)
        (got_grad,) = torch.autograd.grad(got.square().mean(), target)
        assert got.shape == expected.shape == (1, 2, 40, 48)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-3, atol=1e-4 * float(expected_grad.abs().max()))
    assert len(calls) == 3  # raft(): 2 calls; cached: the source's context once for both targets
    cached(source + 0.1, target)
    assert len(calls) == 4  # a new source is encoded again
    with pytest.raises(MtransferError, match="only applies to RAFT"):
        source_cached(load_named_estimator("pyramid"))


def test_fast_path_sets_switches_and_restores_the_shared_modules() -> None:
    backend = random_stable_diffusion("tiny")
    estimator = load_raft("raft-small", weights="random", iterations=1)
    before = {name: type(p) for name, p in backend.unet.attn_processors.items()}
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    conv = backend.unet.conv_in.weight
    with fast_path(backend, estimator, parse_fast_path("sdpa+channels-last+checkpoint+tf32+bf16")) as (fast, est):
        assert all(isinstance(p, AttnProcessor2_0) for p in backend.vae.attn_processors.values())
        assert backend.unet.is_gradient_checkpointing and backend.vae.is_gradient_checkpointing
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        z = torch.randn(1, 4, 8, 8)
        eps = fast.eps(z, 500, backend.condition([""]))
        image = fast.decode(z)
        flow = est(image, image)
        assert eps.dtype == image.dtype == flow.dtype == torch.float32  # autocast outputs return to fp32
        assert fast is not backend and backend.eps.__func__ is type(backend).eps  # the original is untouched
    assert {name: type(p) for name, p in backend.unet.attn_processors.items()} == before
    assert not backend.unet.is_gradient_checkpointing and not backend.vae.is_gradient_checkpointing
    assert conv.is_contiguous()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_before
    with fast_path(backend, estimator, FastPath()):  # the baseline uses the classic attention
        assert all(type(p) is AttnProcessor for p in backend.unet.attn_processors.values())


def test_phase_timer_attributes_forward_and_backward_to_modules() -> None:
    first, second = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
    timer = PhaseTimer({"first": first, "second": second}, torch.device("cpu"))
    x = torch.randn(256, 64, requires_grad=True)
    with timer.attached():
        timer.start()
        loss = second(torch.relu(first(x))).sum()
        loss.backward()
        phases = timer.stop()
    assert set(phases) == {"first_fwd", "second_fwd", "first_bwd", "second_bwd", "total"}
    assert all(value > 0 for value in phases.values())
    assert sum(value for key, value in phases.items() if key != "total") <= phases["total"]
    assert x.grad is not None and first.weight.grad is not None  # the hooks did not cut the graph
    assert not first._forward_hooks and not first._forward_pre_hooks  # detached after the block


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
    ],
)
def test_peak_tflops_table(name: str, precision: str, peak: float | None) -> None:
    assert peak_tflops(name, precision) == peak


def test_flow_fps_on_a_sample_clip() -> None:
    video = REPOSITORY / "sample_videos" / "translate.mp4"
    if not video.is_file():
        pytest.skip("sample_videos/translate.mp4 is made by sample_videos/make_samples.py")
    row = measure_clip(video, "tvl1", torch.device("cpu"), max_frames=3, iterations=2)
    assert row["frames"] == 3 and row["size"] == [128, 160] and not row["random_weights"]
    assert _finite_positive(row["fps"])
    assert 0 <= row["epe"] < 1.0  # TV-L1 follows the clip's sub-pixel glide


def test_bench_command_rejects_bad_options_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtransfer", "bench", "--model", "tiny", "--size", "100"],
        check=False,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --size must be a multiple of 8 (Stable Diffusion's latents are 1/8), got 100"
    ]
