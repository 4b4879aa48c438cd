"""The API's defaults for the optional generation fields: diffusers' own (``StableDiffusionImg2ImgPipeline``,
and ``StableDiffusionXLImg2ImgPipeline`` for the SDXL refiner's aesthetic scores).

The one source inside the frontend (the request schema and the domain object read it). The model
(``img2img_requests.Defaults``) and the client package live in other processes and packages, so they
keep copies, pinned equal to these and to diffusers' signature by ``tests/unit/test_one_source.py``.
"""

from __future__ import annotations

NUM_INFERENCE_STEPS = 50
GUIDANCE_SCALE = 7.5
STRENGTH = 0.8
NUM_IMAGES_PER_PROMPT = 1
NEGATIVE_PROMPT = ""
SCHEDULER = ""  # the checkpoint's own
# SDXL refiner only, applied by the model when the field is not given (the API's default is "not given").
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5
