"""CPU twins of GPU placement: what runs only with GPUs, run here with stand-ins that execute the same code.

- Ray started with two fake GPUs: the executor's actors each ask for and get one GPU, and the worker's
  device (``FrameEditor``, the code a real run uses) is the GPU Ray assigned to it;
- the ``meta`` device stands in for a GPU: ``Editor.load`` puts every model there and ``SourceState.to``
  moves every tensor (a tensor left behind on the CPU would fail on a GPU).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

import pytest
import torch

from mtransfer.app.editor import Editor
from mtransfer.app.executors import Job, RayExecutor
from mtransfer.app.settings import ExecutionSettings, RunSettings, load_settings
from mtransfer.guidance.edit import SourceState

META = torch.device("meta")


def test_editor_loads_every_model_onto_the_device_it_is_given() -> None:
    settings = load_settings("tiny", ['estimator.name="raft-small"', 'estimator.weights="random"'])
    editor = Editor.load(settings, torch.rand(3, 64, 64), META)
    modules = (editor.backend.unet, editor.backend.vae, editor.backend.text_encoder, editor.estimator)
    places = {tensor.device for module in modules for tensor in (*module.parameters(), *module.buffers())}
    assert editor.device == META and places == {META}


def test_source_state_to_moves_every_tensor_it_holds() -> None:
    values = {"image": torch.rand(3, 8, 8), "prompt": "a cat", "latent": torch.rand(1, 4, 1, 1),
              "cond": torch.rand(1, 77, 8), "uncond": torch.rand(1, 77, 8), "timesteps": [10, 5],
              "references": [torch.rand(1, 4, 1, 1), torch.rand(1, 4, 1, 1)], "start": torch.rand(1, 4, 1, 1),
              "origin": "test"}
    assert set(values) == {field.name for field in dataclasses.fields(SourceState)}  # a new field joins this test
    moved = SourceState(**values).to(META)
    tensors = [value for field in dataclasses.fields(moved) for value in
               (getattr(moved, field.name) if isinstance(getattr(moved, field.name), list) else [getattr(moved, field.name)])
               if isinstance(value, torch.Tensor)]
    assert len(tensors) == 7 and {tensor.device for tensor in tensors} == {META}
    assert (moved.prompt, moved.timesteps, moved.origin) == ("a cat", [10, 5], "test")


ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the probe lives in this test module


@dataclass(frozen=True)
class GpuProbe:
    """A worker factory for the actors: builds the real ``FrameEditor`` of a CUDA run with torch told that
    the GPUs Ray made visible exist, and ``Editor.load`` replaced by a recorder of the device it is given."""

    settings: RunSettings

    def __call__(self):
        from mtransfer.app import frames

        visible = [part for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part]
        torch.cuda.is_available = lambda: bool(visible)
        torch.cuda.device_count = lambda: len(visible)
        frames.Editor.load = staticmethod(lambda settings, source, device: device)
        device = frames.FrameEditor(self.settings, torch.zeros(3, 8, 8), 1)().args[0]
        gpu_ids = [str(i) for i in ray.get_gpu_ids()]

        def report(data, shared, progress, parents):
            return {"gpu_ids": gpu_ids, "visible": visible, "device": str(device), "pid": os.getpid()}

        return report


@pytest.fixture(scope="module")
def two_fake_gpus():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_gives_each_actor_one_gpu_and_the_worker_uses_the_one_it_was_given(two_fake_gpus) -> None:
    executor = RayExecutor(ExecutionSettings(executor="ray"), use_gpus=True)  # workers = 0: one per GPU
    settings = load_settings("tiny", ['model.device="cuda:1"'])  # any CUDA name means the worker's own GPU
    done = list(executor.run(GpuProbe(settings), None, [Job(index, index) for index in range(4)]))
    reports = {finished.result["pid"]: finished.result for finished in done}
    assert len(reports) == 2  # two actors (one per GPU), both worked
    assert sorted(id for report in reports.values() for id in report["gpu_ids"]) == ["0", "1"]
    for report in reports.values():
        assert report["visible"] == report["gpu_ids"]  # Ray shows each actor only its own GPU
        assert report["device"] == "cuda"  # so the worker's "cuda" is that GPU, whatever model.device named


def test_models_dropped_on_a_gpu_hand_its_memory_back_and_nowhere_else(monkeypatch) -> None:
    """``release_memory`` is the one place the guide stage (after preparing the source for Ray workers)
    and the benchmark (after a failed variant) free the CUDA cache: a CUDA device object needs no GPU."""
    from mtransfer.devices import release_memory

    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    release_memory(torch.device("cuda"))
    release_memory(torch.device("cuda", 1))
    release_memory(torch.device("cpu"))
    assert calls == [1, 1]
