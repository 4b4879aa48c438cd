"""Which Stable Diffusion a checkpoint folder holds, read from its configs before any weight loads.

One model instance serves one family. ``model_index.json``'s ``_class_name`` says SD (1.x or 2.x) or SDXL;
where that is ambiguous the component configs decide: SD 2.x's UNet cross-attends to OpenCLIP's 1024-wide
states through linear projections (SD 1.x: CLIP's 768, convolutions), the scheduler's ``prediction_type``
says epsilon or v, and an SDXL refiner is the SDXL folder whose UNet is conditioned on an aesthetic score
(``requires_aesthetics_score``, and no first text encoder). Anything else is refused in one line naming
what was found and what is served.

No torch: ``classify`` is pure (unit-tested on dicts); ``detect`` reads the configs with diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
XL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
SERVED = (
    "SD 1.x, SD 2.x (epsilon or v) and SDXL (base or refiner) checkpoints, whose model_index.json names "
    + ", ".join(SD_PIPELINES + XL_PIPELINES)
)
# The refiner's size conditioning is an aesthetic score (diffusers' names and defaults).
AESTHETIC_FIELDS = ("aesthetic_score", "negative_aesthetic_score")
AESTHETIC_DEFAULTS = {"aesthetic_score": 6.0, "negative_aesthetic_score": 2.5}


class UnsupportedCheckpoint(ValueError):
    """A folder of another kind: the message is the one line ``initialize`` fails with."""


@dataclass(frozen=True)
class Family:
    name: str  # sd1, sd1-v, sd2, sd2-v, sdxl, sdxl-refiner
    title: str  # for logs and the model card: "SD 2.x (v-prediction)"
    xl: bool  # SDXL: two text encoders, pooled embeddings and size conditioning per row
    prediction_type: str  # the scheduler's: epsilon, v_prediction or sample
    native_side: int  # the side it was trained at (UNet sample size x VAE scale)
    refiner: bool = False

    @property
    def pipeline(self) -> str:
        """The diffusers img2img class that loads it (a text-to-image folder loads into it, as diffusers allows)."""
        return XL_PIPELINES[1] if self.xl else SD_PIPELINES[1]

    @property
    def fields(self) -> tuple[str, ...]:
        """Request fields beyond the seed API's that this family takes."""
        return AESTHETIC_FIELDS if self.refiner else ()

    @property
    def max_image_side(self) -> int:
        """The default cap on an image side (``max_image_side`` "auto"): twice the native side."""
        return 2 * self.native_side


def classify(
    model_index: dict[str, Any], unet: dict[str, Any] | None, scheduler: dict[str, Any] | None, vae_scale: int = 8
) -> Family:
    """The family of a folder whose ``model_index.json`` (or lone ``config.json``) is ``model_index``, with its
    UNet and scheduler configs (None: absent). Raises ``UnsupportedCheckpoint``."""
    found = model_index.get("_class_name") or "no _class_name"
    if found not in SD_PIPELINES + XL_PIPELINES:
        kind = "a pipeline" if "unet" in model_index or "transformer" in model_index else "not a pipeline folder"
        raise UnsupportedCheckpoint(f"found {found} ({kind}); sd_img2img serves {SERVED}")
    if unet is None:
        raise UnsupportedCheckpoint(f"found {found} without a unet/config.json; sd_img2img serves {SERVED}")
    if int(unet.get("in_channels", 4)) != 4:  # an inpainting UNet (9: latents, mask, masked image) under an SD name
        raise UnsupportedCheckpoint(
            f"found {found} whose UNet takes {unet.get('in_channels')} input channels (an inpainting UNet?);"
            f" sd_img2img serves {SERVED} with 4-channel UNets"
        )
    prediction = (scheduler or {}).get("prediction_type") or "epsilon"
    native = int(unet.get("sample_size") or 64) * vae_scale
    text_time = unet.get("addition_embed_type") == "text_time"
    if found in XL_PIPELINES:
        if not text_time:
            raise UnsupportedCheckpoint(
                f"found {found} whose UNet has no SDXL size conditioning; sd_img2img serves {SERVED}"
            )
        refiner = bool(model_index.get("requires_aesthetics_score")) or _absent(model_index.get("text_encoder"))
        title = "SDXL refiner" if refiner else "SDXL base"
        return Family("sdxl-refiner" if refiner else "sdxl", title, True, prediction, native, refiner)
    if text_time:
        raise UnsupportedCheckpoint(f"found {found} with an SDXL UNet; sd_img2img serves {SERVED}")
    # SD 2.x: OpenCLIP ViT-H's 1024-wide states, through linear projections (diffusers' own conversion test).
    two = int(unet.get("cross_attention_dim") or 768) == 1024 or bool(unet.get("use_linear_projection"))
    version = "sd2" if two else "sd1"
    v = prediction == "v_prediction"
    title = f"SD {version[2]}.x" + (" (v-prediction)" if v else "")
    return Family(version + ("-v" if v else ""), title, False, prediction, native)


def _absent(component: Any) -> bool:
    """model_index.json writes a missing component as ``[null, null]``."""
    return component is None or (isinstance(component, list) and all(part is None for part in component))


def detect(model_name_or_path: str, *, local_files_only: bool = False) -> Family:
    """Read the configs of a folder or hub id (no weights) and classify them."""
    from diffusers import AutoencoderKL, DiffusionPipeline, EulerDiscreteScheduler, UNet2DConditionModel

    def config(reader: Any, subfolder: str | None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = reader.load_config(
                model_name_or_path, subfolder=subfolder, local_files_only=local_files_only
            )
        except (OSError, ValueError):
            return None
        return found

    index = config(DiffusionPipeline, None) or config(UNet2DConditionModel, None)  # a lone model: config.json
    if index is None:
        raise UnsupportedCheckpoint(
            f"found neither model_index.json nor config.json at {model_name_or_path!r}; sd_img2img serves {SERVED}"
        )
    vae = config(AutoencoderKL, "vae") or {}
    scale = 2 ** (len(vae.get("block_out_channels") or (0, 0, 0, 0)) - 1)
    scheduler = config(EulerDiscreteScheduler, "scheduler")  # any scheduler class reads scheduler_config.json
    return classify(index, config(UNet2DConditionModel, "unet"), scheduler, scale)
