"""A diffusers Stable Diffusion 1.x folder written back as one checkpoint in the original (CompVis/LDM) key
layout, as community ``.safetensors``/``.ckpt`` files are: the inverse of diffusers' single-file conversion,
for any number of blocks and layers per block (so it works on the tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_LAYERS = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next(folder.glob("*.safetensors")))


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _rename(key: str, prefixes: dict[str, str]) -> str | None:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def unet_to_original(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    per = config["layers_per_block"] + 1
    prefixes = dict(_UNET_LAYERS)
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(per - 1):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * per + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{i * per + j + 1}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per}.0.op."
        for j in range(per):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per + j}.1."
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * per + per - 1}.{2 if 'Attn' in up_type else 1}."
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    out = {}
    for key, value in weights.items():
        new = _rename(key, prefixes)
        if new is None:
            raise KeyError(f"no original name for UNet weight {key}")
        if ".resnets." in key:
            for old_name, ldm_name in _RESNET.items():
                new = new.replace(f".{old_name}.", f".{ldm_name}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_original(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        prefixes[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        prefixes[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
    for i in range(blocks):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{blocks - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{blocks - 1 - i}.upsample."
    out = {}
    for key, value in weights.items():
        new = _rename(key, prefixes) or key
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in new:
            for old_name, ldm_name in _VAE_ATTENTION.items():
                new = new.replace(f".attn_1.{old_name}", f".attn_1.{ldm_name}")
            if value.dim() == 2:  # the original's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def original_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of the SD 1.x diffusers ``folder`` under its original name, as one flat state dict."""
    state = {}
    state.update(unet_to_original(_weights(folder / "unet"), _config(folder / "unet")))
    state.update(vae_to_original(_weights(folder / "vae"), _config(folder / "vae")))
    for key, value in _weights(folder / "text_encoder").items():  # transformers 5.6+ saves it without text_model.
        state["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    return {key: value.contiguous() for key, value in state.items()}
