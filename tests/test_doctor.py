"""``mtransfer doctor``: the machine, weights, measured memory and estimated time per preset, and the exit code."""

import sys

import pytest

from mtransfer.cli import main
from mtransfer.bench.doctor import EFFICIENCY, FakeModels, Gpu, Machine, check_preset, machine
from mtransfer.bench.memory import GIB


def test_doctor_on_this_cpu_machine_says_no_gpu_and_tiny_can_run(monkeypatch, capsys) -> None:
    if machine().gpus:
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setattr(sys, "argv", ["mtransfer", "doctor", "--pipeline", "tiny"])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "no CUDA GPU is visible to torch" in out and "tiny can run here on cpu" in out
    assert "SD CompVis/stable-diffusion-v1-4 MISSING" in out  # the paper preset's weights, looked up offline
    assert "paper: Stable Diffusion CompVis/stable-diffusion-v1-4: not in the Hugging Face cache" in out


@pytest.fixture(scope="module")
def models() -> FakeModels:
    return FakeModels()


def _gpu_machine(free_gib: float) -> Machine:
    return Machine("2.x", "13.0", "test driver", (Gpu(0, "NVIDIA H100 80GB HBM3", 80 * GIB, int(free_gib * GIB)),),
                   16, 64 * GIB)


def test_a_preset_that_does_not_fit_gets_the_first_speed_setting_that_fits(models, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = check_preset("paper", _gpu_machine(12), models)
    assert small.device == "cuda" and 14 * GIB < small.memory.peak < 16 * GIB  # SD's own SDPA, fp32, batch 1
    assert any("not in the Hugging Face cache and HF_HUB_OFFLINE is set" in p for p in small.problems)
    assert any("one pass needs" in p and "12.0 GiB free" in p for p in small.problems)
    assert small.fix.startswith("on a connected machine `huggingface-cli download CompVis/stable-diffusion-v1-4`")
    folder = tmp_path / "sd"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    found = (f"model.model={folder}", 'estimator.weights="random"', 'video.estimator="tvl1"')
    memory_only = check_preset("paper", _gpu_machine(12), models, found)
    assert [p for p in memory_only.problems if "one pass needs" not in p] == []
    assert "--set model.speed=\"checkpoint\"" in memory_only.fix and "same fp32 math" in memory_only.fix
    # time: 5,000 guided passes of counted FLOPs at the H100's fp32 peak x the stated efficiency
    assert small.guided_passes == 5000 and small.rate_tflops == pytest.approx(67.0 * EFFICIENCY)
    assert small.seconds_per_edit == pytest.approx(5000 * small.memory.flops / (67.0 * EFFICIENCY * 1e12))
    assert 7e12 < small.memory.flops < 9e12  # BENCHMARKS.md: about 8.1 TFLOP per pass at 512²
    large = check_preset("paper", _gpu_machine(70), models)
    assert not any("one pass needs" in p for p in large.problems)


def test_this_machine_is_read_from_torch() -> None:
    here = machine()
    assert here.device == ("cuda" if here.gpus else "cpu") and here.cpu_threads >= 1


def test_weights_are_looked_up_where_loading_looks_without_reading_them(tmp_path, monkeypatch) -> None:
    from mtransfer.diffusion import stable_diffusion as sd
    from mtransfer.estimators import raft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert sd.model_location("someone/sd") == (False, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    cached = tmp_path / "hf" / "hub" / "models--someone--sd" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    (cached / "model_index.json").write_text("{}")
    (cached.parent.parent / "refs").mkdir()
    (cached.parent.parent / "refs" / "main").write_text("abc")
    found, where = sd.model_location("someone/sd")
    assert found and where.startswith("Hugging Face cache") and str(cached) in where

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(raft.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(raft.socket, "getaddrinfo", lambda *args: (_ for _ in ()).throw(OSError("no DNS")))
    found, where = raft.weights_location("raft-large", "C_T_V1")
    assert not found and "C_T_V1 not in the torch hub cache" in where and "cannot be reached" in where
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "raft_large_C_T_V1-22a6c225.pth").write_bytes(b"")
    assert raft.weights_location("raft-large", "C_T_V1")[0]
    assert raft.weights_location("raft-small", "random") == (True, "random weights (nothing to find)")
    assert raft.weights_location("raft-small", str(tmp_path / "none.pth"))[0] is False
