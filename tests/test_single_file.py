"""Single-file checkpoints: the tiny random SD written as one ``.safetensors``/``.ckpt`` in the original
(CompVis) layout loads offline with ``--model FILE`` and edits exactly like the diffusers folder it came
from; a missing, unreadable or unsupported file is one line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mtransfer.diffusion.stable_diffusion import load_stable_diffusion, tiny_stable_diffusion_folder
from mtransfer.errors import InputError
from mtransfer.files import save_image
from tests.in_process import run_main
from tests.sd_checkpoint import original_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's cache, and the tiny model as model.safetensors and model.ckpt (nested state_dict)."""
    root = tmp_path_factory.mktemp("single-file")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(root / "cache"))
        state = original_checkpoint(tiny_stable_diffusion_folder("tiny"))
    assert any(key.startswith("model.diffusion_model.input_blocks.") for key in state)
    save_file(state, root / "model.safetensors")
    torch.save({"state_dict": state, "global_step": 0}, root / "model.ckpt")
    return root


@pytest.fixture()
def offline(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, with an empty Hugging Face cache: nothing can be fetched, for the configs or anything else."""
    monkeypatch.setenv("MTRANSFER_CACHE", str(files / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "photo.png", torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    return tmp_path


EDIT = ["--flow", "translate(2, 1)", "--estimator", "pyramid", "--size", "64x64", "--device", "cpu", "--steps", "3",
        "--recursions", "2", "--guidance-weight", "30", "--clip", "20", "--prompt", "a cat"]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_a_safetensors_file_edits_offline_exactly_like_its_diffusers_folder(
    files: Path, offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_main(monkeypatch, capsys, "edit", "photo.png", "--model", files / "model.safetensors", *EDIT,
                         "--out", "from-file")
    assert code == 0, err
    code, err = run_main(monkeypatch, capsys, "edit", "photo.png", "--model", "tiny", *EDIT, "--out", "from-folder")
    assert code == 0, err
    edited = _pixels(offline / "from-file" / "edited.png")
    assert np.array_equal(edited, _pixels(offline / "from-folder" / "edited.png"))
    assert not np.array_equal(edited, _pixels(offline / "photo.png"))


def test_a_ckpt_file_gives_the_same_weights(files: Path, offline: Path) -> None:
    loaded, reference = load_stable_diffusion(files / "model.ckpt"), load_stable_diffusion("tiny")
    for part in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, part).state_dict(), getattr(reference, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), part
    assert loaded.scaling_factor == reference.scaling_factor and loaded.prediction_type == "epsilon"


def _fake_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, path)
    return path


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CLIP = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


@pytest.mark.parametrize(
    ("name", "shapes", "message"),
    [
        ("sdxl.safetensors", {UNET_IN: (320, 4, 3, 3), "conditioner.embedders.1.model.ln_final.weight": (4,)},
         "an SDXL checkpoint, which mtransfer does not support"),
        ("inpaint.safetensors", {UNET_IN: (320, 9, 3, 3), CLIP: (8, 4)}, "takes 9 input channels"),
        ("vae-only.safetensors", {"first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3)},
         "not a Stable Diffusion checkpoint in the original layout"),
        ("odd-size.safetensors", {UNET_IN: (48, 4, 3, 3), CLIP: (8, 4)}, "48 base channels"),
        ("no-text.safetensors", {UNET_IN: (320, 4, 3, 3)}, "no CLIP or OpenCLIP text encoder"),
        # A real-size SD 1.x file needs CLIP's tokenizer, which the empty offline cache does not have.
        ("real.safetensors", {UNET_IN: (320, 4, 3, 3), CLIP: (8, 4)},
         "huggingface-cli download CompVis/stable-diffusion-v1-4 --include 'tokenizer/*'"),
    ],
)
def test_unsupported_files_are_refused_in_one_line_naming_them(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, name: str, shapes, message: str
) -> None:
    path = _fake_checkpoint(offline / name, shapes)
    code, err = run_main(monkeypatch, capsys, "edit", "photo.png", "--model", path, *EDIT)
    assert code == 2
    assert err.strip().count("\n") == 0 and str(path) in err and message in err, err


def test_missing_and_broken_files_are_one_line_naming_them(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (offline / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    (offline / "broken.ckpt").write_bytes(b"\x00" * 64)
    for name, message in (("missing.safetensors", "no such checkpoint file"), ("missing.ckpt", "no such checkpoint file"),
                          ("broken.safetensors", "not a readable .safetensors checkpoint"),
                          ("broken.ckpt", "not a readable .ckpt checkpoint")):
        code, err = run_main(monkeypatch, capsys, "edit", "photo.png", "--model", offline / name, *EDIT)
        assert code == 2, (name, err)
        assert err.strip().count("\n") == 0 and str(offline / name) in err and message in err, err
    with pytest.raises(InputError, match="no such checkpoint file"):
        load_stable_diffusion(offline / "missing.safetensors")


def test_a_tokenizer_without_its_vocabulary_is_refused(files: Path, offline: Path) -> None:
    """transformers builds an empty tokenizer when vocab.json/merges.txt are missing; every prompt would then
    become the same ids, so such a model is refused instead."""
    import shutil

    folder = offline / "no-vocab"
    shutil.copytree(tiny_stable_diffusion_folder("tiny"), folder)
    (folder / "tokenizer" / "vocab.json").unlink()
    (folder / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(InputError, match="tokenizer has no vocabulary"):
        load_stable_diffusion(folder)
