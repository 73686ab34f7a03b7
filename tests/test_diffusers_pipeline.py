"""``mtransfer.MotionGuidancePipeline``: README's example runs as written and equals ``mtransfer edit``;
every way of building the pipeline gives the same edit; bad arguments are refused naming the argument."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtransfer.errors import UsageError
from tests.in_process import run_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtransfer-cache")


@pytest.fixture()
def workdir(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_videos").mkdir()
    shutil.copy(ROOT / "sample_videos" / "cat.png", tmp_path / "sample_videos" / "cat.png")
    return tmp_path


@pytest.fixture(scope="module")
def tiny(cache: Path):
    from mtransfer import MotionGuidancePipeline

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(cache))
        return MotionGuidancePipeline.from_pretrained("tiny", flow_estimator="pyramid")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_the_readme_example_equals_mtransfer_edit(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    example = readme_example()
    assert len([line for line in example.splitlines() if line.strip() and not line.startswith("#")]) <= 10
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README's own code, as a user runs it
    printed = capsys.readouterr().out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    code, err = run_main(
        # a spec's pixels are the image's own: 6 px at the 96 px working width is 24 px of the 384 px photo
        monkeypatch, capsys, "edit", "sample_videos/cat.png", "--flow", "translate(24, 0)", "--prompt", "a cat",
        "--size", "64x96", "--steps", "4", "--recursions", "2", "--seed", "0", "--model", "tiny",
        "--estimator", "pyramid", "--device", device, "--out", "cli",
    )
    assert code == 0, err
    ours = _pixels(workdir / "edited.png")
    assert ours.shape == (64, 96, 3)
    assert np.array_equal(ours, _pixels(workdir / "cli" / "edited.png"))
    assert not np.array_equal(ours, _pixels(workdir / "cli" / "source.png"))
    final = json.loads((workdir / "cli" / "losses.json").read_text())[-1]
    assert f"'total': {final['total']!r}" in printed and "torch.Size([2, 64, 96])" in printed


def test_components_single_file_and_from_pretrained_give_the_same_edit(tiny, workdir: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from mtransfer import MotionGuidancePipeline
    from mtransfer.diffusion.stable_diffusion import tiny_stable_diffusion_folder
    from tests.sd_checkpoint import original_checkpoint

    folder = tiny_stable_diffusion_folder("tiny")
    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    from_components = MotionGuidancePipeline(**sd.components, flow_estimator="pyramid")
    save_file(original_checkpoint(folder), workdir / "tiny.safetensors")
    from_file = MotionGuidancePipeline.from_single_file(workdir / "tiny.safetensors", flow_estimator="pyramid")
    image = Image.open(workdir / "sample_videos" / "cat.png")
    arguments = dict(prompt="a cat", height=64, width=64, num_inference_steps=2, recursions=2, output_type="pt")
    results = [pipe(image, "rotate(8)", **arguments) for pipe in (tiny, from_components, from_file)]
    assert results[0].images.shape == (1, 3, 64, 64) and len(results[0].losses) == 4
    for other in results[1:]:
        assert torch.equal(other.images, results[0].images)
        assert other.losses == results[0].losses


def test_callbacks_progress_bar_dtype_and_output_types(
    tiny, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    image = np.asarray(Image.open(workdir / "sample_videos" / "cat.png").convert("RGB").resize((64, 64)))
    calls = []
    tiny.set_progress_bar_config(disable=True)
    result = tiny(image, "translate(3, 0)", num_inference_steps=3, recursions=2, output_type="np",
                  callback_on_step_end=lambda pipe, step, t, kwargs: calls.append((pipe, step, t, kwargs)))
    assert "it/s" not in capsys.readouterr().err  # the bar was switched off
    assert [(step, t) for _, step, t, _ in calls] == [(0, 667), (1, 334), (2, 1)]
    assert all(pipe is tiny and list(kwargs) == ["latents"] for pipe, _, _, kwargs in calls)
    assert all(kwargs["latents"].shape == (1, 4, 8, 8) for _, _, _, kwargs in calls)  # 64 px / the VAE's 8
    assert result.images.shape == (1, 64, 64, 3) and result.images.dtype == np.float32
    tiny.set_progress_bar_config()
    tiny(image, "translate(3, 0)", num_inference_steps=1, recursions=1)
    assert "2/2" in capsys.readouterr().err  # inversion step + guided pass, on diffusers' own bar


def test_callback_latents_are_the_steps_own_and_replace_the_next_start(tiny) -> None:
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    arguments = dict(num_inference_steps=3, recursions=2, output_type="pt")
    tiny.set_progress_bar_config(disable=True)
    plain = tiny(image, "translate(3, 0)", **arguments)
    seen = []

    def keep(pipe, step, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs  # diffusers' no-op: the latents handed back unchanged

    assert torch.equal(tiny(image, "translate(3, 0)", callback_on_step_end=keep, **arguments).images, plain.images)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1])
    halved = tiny(image, "translate(3, 0)", **arguments,
                  callback_on_step_end=lambda pipe, step, t, kwargs: {"latents": kwargs["latents"] * 0.5})
    assert not torch.allclose(halved.images, plain.images, atol=1e-3)
    assert halved.losses[:2] == plain.losses[:2] and halved.losses[2:] != plain.losses[2:]  # step 1 starts elsewhere


def test_interrupting_in_the_callback_decodes_that_steps_latents(tiny) -> None:
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    seen = []

    def stop_after_first(pipe, step, t, kwargs):
        seen.append(kwargs["latents"])
        pipe._interrupt = True

    tiny.set_progress_bar_config(disable=True)
    result = tiny(image, "translate(3, 0)", num_inference_steps=3, recursions=2, output_type="pt",
                  callback_on_step_end=stop_after_first)
    assert len(seen) == 1 and [record["step"] for record in result.losses] == [0, 0]
    decoded = (tiny.vae.decode(seen[0] / tiny.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(result.images, decoded, atol=1e-6)
    again = tiny(image, "translate(3, 0)", num_inference_steps=3, recursions=2, output_type="pt")
    assert len(again.losses) == 6  # the next call starts uninterrupted


def test_callback_returning_latents_of_another_shape_is_refused(tiny) -> None:
    tiny.set_progress_bar_config(disable=True)
    with pytest.raises(UsageError, match=r"callback_on_step_end: returned latents \(1, 4, 4, 4\)"):
        tiny(torch.rand(3, 64, 64), "translate(2, 0)", num_inference_steps=2, recursions=1,
             callback_on_step_end=lambda pipe, step, t, kwargs: {"latents": torch.zeros(1, 4, 4, 4)})


def test_torch_dtype_and_to_move_the_models(cache: Path, workdir: Path) -> None:
    from mtransfer import MotionGuidancePipeline

    pipe = MotionGuidancePipeline.from_pretrained("tiny", flow_estimator="pyramid", torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    pipe = pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    result = pipe(torch.rand(3, 64, 64), "translate(2, 0)", num_inference_steps=1, recursions=1, output_type="pt")
    assert result.images.dtype == torch.float32 and torch.isfinite(result.images).all()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"image": "photo.png"}, "image:"),
        ({"height": 60}, "height:"),
        ({"width": 0}, "width:"),
        ({"flow": torch.zeros(2, 8, 8) + 1}, "flow: shape (2, 8, 8), expected (2, 64, 64)"),
        ({"flow": "translate(0, 0)"}, "flow: moves no pixel"),
        ({"flow": 3}, "flow:"),
        ({"edit_mask": torch.ones(32, 32)}, "edit_mask: shape"),
        ({"edit_mask": torch.zeros(64, 64)}, "edit_mask: values"),
        ({"output_type": "latent"}, "output_type:"),
        ({"callback_on_step_end": "print"}, "callback_on_step_end:"),
        ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, "callback_on_step_end_tensor_inputs:"),
        ({"callback_on_step_end_tensor_inputs": "latents"}, "callback_on_step_end_tensor_inputs:"),
        ({"image": torch.rand(4, 64, 64)}, "image: a tensor must be (3, H, W)"),
        ({"num_inference_steps": 0}, "guidance.steps"),
    ],
)
def test_bad_arguments_are_refused_naming_them(tiny, arguments: dict, named: str) -> None:
    call = {"image": torch.rand(3, 64, 64), "flow": "translate(2, 0)", **arguments}
    with pytest.raises(UsageError) as refused:
        tiny(call.pop("image"), call.pop("flow"), **call)
    assert named in str(refused.value), str(refused.value)


def test_a_flow_estimator_without_gradients_is_refused(tiny) -> None:
    with pytest.raises(UsageError, match="flow_estimator: 'tvl1' is not a differentiable"):
        type(tiny)(**tiny.components | {"flow_estimator": "tvl1"})


def test_importing_mtransfer_stays_light() -> None:
    probe = "import sys, mtransfer; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr
