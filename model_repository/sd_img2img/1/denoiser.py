"""The torch side of step-level batching: diffusers' img2img loop cut at its step boundary.

``StableDiffusionImg2ImgPipeline.__call__`` runs encode, a denoising loop and decode for one batch that
agrees on every setting. Here each request keeps what the loop keeps per call (its own scheduler
instance, timesteps, generators, guidance scale, prompt embeddings, SDXL's pooled embeddings and size
conditioning, and latents), and a tick runs one
UNet forward over the rows of many requests, each row with its own timestep. The rest of the step
(classifier-free guidance combine, ``scheduler.step``) runs per request on its own rows, exactly as the
pipeline would for that request alone; with ``batch_invariant`` the shared forward is invariant to its
neighbours too, so a request's bytes do not depend on who else is in flight, or when it joined.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor

from img2img_requests import Img2ImgRequest, to_uint8


@dataclass(eq=False)
class Flight:
    """One request between admission and decode (what the pipeline's loop keeps in locals)."""

    request: Img2ImgRequest
    scheduler: Any
    timesteps: torch.Tensor  # the steps this request runs (img2img: the tail of the schedule)
    generators: list[torch.Generator]
    embeddings: torch.Tensor  # [rows, seq, dim]: per image [negative, prompt] under guidance, else [prompt]
    latents: torch.Tensor  # [n, C, h, w]
    # SDXL's UNet's added_cond_kwargs, rows as embeddings: text_embeds (pooled) [rows, dim] and time_ids [rows, 5|6].
    added: dict[str, torch.Tensor] | None
    step_kwargs: dict[str, Any]
    guided: bool
    index: int = 0  # the next timestep to run
    estimate: torch.Tensor | None = None  # the first image's denoised estimate after the last step (previews)

    @property
    def rows(self) -> int:
        return self.latents.shape[0] * (2 if self.guided else 1)


class StepDenoiser:
    """Implements ``engine.Denoiser`` on a loaded ``Img2ImgRunner``'s pipeline."""

    def __init__(self, pipe: Any, schedulers: dict[str, Any], *, per_image: bool = False) -> None:
        self.pipe = pipe
        self.schedulers = schedulers
        self.per_image = per_image  # determinism "per_image": each image's rows are their own forward
        self.device = pipe._execution_device
        self.dtype = pipe.unet.dtype
        self.scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        # SDXL (base or refiner): two text encoders (the refiner keeps the second), pooled embeddings and size
        # conditioning per row, and a VAE run in float32 where its config asks (fp16 overflows in it).
        self.xl = hasattr(pipe, "text_encoder_2")
        self.upcast_vae = self.xl and bool(getattr(pipe.vae.config, "force_upcast", False))
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")

    def guided(self, request: Img2ImgRequest) -> bool:
        """diffusers' ``do_classifier_free_guidance``."""
        return request.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def rows(self, request: Img2ImgRequest) -> int:
        return request.num_images_per_prompt * (2 if self.guided(request) else 1)

    def group(self, request: Img2ImgRequest) -> Hashable:
        return tuple(request.image.shape[:2])

    @torch.inference_mode()
    def admit(self, requests: Sequence[Img2ImgRequest]) -> list[Flight]:
        """The requests admitted on one tick: their prompts encoded together, then each prepared."""
        encoded = self._encode_prompts(requests)
        return [self._prepare(request, *own) for request, own in zip(requests, encoded, strict=True)]

    def _encode_prompts(self, requests: Sequence[Img2ImgRequest]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The pipeline's step 1 for every request admitted on this tick: one ``encode_prompt`` call per
        guidance mode, then per image [negative, prompt] under guidance, else [prompt]; for SDXL the pooled
        embeddings alike. The text encoders' layers run row by row under the invariance plan (as in a whole
        pipeline call over many prompts), so a prompt's embedding does not depend on the prompts beside it.

        An empty negative prompt is diffusers' ``negative_prompt=None``: the empty string encoded, or zeros
        where the checkpoint says ``force_zeros_for_empty_prompt`` (SDXL base)."""
        encoded: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(requests)
        zeros_for_empty = self.xl and bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))
        for guided in (True, False):
            chosen = [i for i, request in enumerate(requests) if self.guided(request) == guided]
            if not chosen:
                continue
            prompts = [requests[i].prompt for i in chosen]
            negatives = [requests[i].negative_prompt for i in chosen] if guided else None
            pooled = negative_pooled = None
            if self.xl:
                prompt_embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                    prompt=prompts,
                    device=self.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=guided,
                    negative_prompt=negatives,
                )
            else:
                prompt_embeds, negative_embeds = self.pipe.encode_prompt(prompts, self.device, 1, guided, negatives)
            for row, i in enumerate(chosen):
                zeroed = zeros_for_empty and guided and not requests[i].negative_prompt
                n = requests[i].num_images_per_prompt
                own = self._rows(prompt_embeds, negative_embeds if guided else None, row, n, zeroed)
                own_pooled = None if pooled is None else self._rows(pooled, negative_pooled, row, n, zeroed)
                encoded[i] = (own, own_pooled)
        return [own for own in encoded if own is not None]

    @staticmethod
    def _rows(positive: torch.Tensor, negative: torch.Tensor | None, row: int, n: int, zeroed: bool) -> torch.Tensor:
        """One prompt's rows as ``num_images_per_prompt=n`` gives them: per image [negative, prompt] under
        guidance (``negative`` given), else [prompt]."""
        own = positive[row : row + 1].repeat(n, *(1,) * (positive.ndim - 1))
        if negative is None:
            return own
        theirs = torch.zeros_like(own) if zeroed else negative[row : row + 1].repeat(n, *(1,) * (negative.ndim - 1))
        return torch.stack([theirs, own], dim=1).flatten(0, 1)

    def _time_ids(self, request: Img2ImgRequest, pooled: torch.Tensor, guided: bool) -> torch.Tensor:
        """SDXL's size conditioning, diffusers' defaults: original and target size the image's, crop (0, 0); the
        refiner's is the aesthetic score instead of the target size. Rows as the embeddings'."""
        pipe, n = self.pipe, request.num_images_per_prompt
        size = (int(request.image.shape[0]), int(request.image.shape[1]))  # (height, width), as diffusers
        encoder_2 = getattr(pipe, "text_encoder_2", None)
        projection = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        positive, negative = pipe._get_add_time_ids(
            size,
            (0, 0),
            size,
            request.aesthetic_score if request.aesthetic_score is not None else 6.0,
            request.negative_aesthetic_score if request.negative_aesthetic_score is not None else 2.5,
            size,
            (0, 0),
            size,
            dtype=pooled.dtype,
            text_encoder_projection_dim=projection,
        )
        return self._rows(positive.to(self.device), negative.to(self.device) if guided else None, 0, n, False)

    def _prepare(self, request: Img2ImgRequest, embeddings: torch.Tensor, pooled: torch.Tensor | None) -> Flight:
        """The pipeline's steps 2-6 for one request, its prompt encoded: set and cut the timesteps, encode
        the image and noise it to the first timestep."""
        pipe, n, guided = self.pipe, request.num_images_per_prompt, self.guided(request)
        # 2. A scheduler of its own (PNDM and the multistep ones keep history), timesteps cut by strength.
        scheduler = copy.deepcopy(self.schedulers[request.scheduler])
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        timesteps = self._cut(scheduler, request.num_inference_steps, request.strength)
        # 3. Init latents: the image encoded once per generator (a batch of one: the VAE encoder has no
        # invariance plan, and its convolutions round differently at other batch sizes on CPU), noised to
        # the first timestep.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
        pixels = torch.from_numpy(np.ascontiguousarray(request.image[np.newaxis])).permute(0, 3, 1, 2).contiguous()
        image = pipe.image_processor.preprocess(pixels.to(self.device, self.dtype) / 255.0)
        image = image.to(device=self.device, dtype=embeddings.dtype)
        with self._vae_in_float32() as vae_dtype:
            image = image.to(vae_dtype)
            init = torch.cat([retrieve_latents(pipe.vae.encode(image), generator=g) for g in generators], dim=0)
        init = self._scale_latents(init.to(embeddings.dtype))
        noise = randn_tensor(init.shape, generator=generators, device=self.device, dtype=embeddings.dtype)
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(n))
        added = None
        if pooled is not None:
            added = {"text_embeds": pooled, "time_ids": self._time_ids(request, pooled, guided)}
        return Flight(
            request=request,
            scheduler=scheduler,
            timesteps=timesteps,
            generators=generators,
            embeddings=embeddings,
            latents=latents,
            added=added,
            step_kwargs=self._step_kwargs(scheduler, generators),
            guided=guided,
        )

    @contextlib.contextmanager
    def _vae_in_float32(self) -> Iterator[torch.dtype]:
        """SDXL's pipeline runs its VAE in float32 where the VAE's config says ``force_upcast`` (it overflows in
        fp16), then back; yields the dtype the VAE runs in. SD 1.x/2.x's pipeline never upcasts: nor does this."""
        vae = self.pipe.vae
        if not (self.upcast_vae and vae.dtype == torch.float16):
            yield vae.dtype
            return
        # torch's own Module.to: diffusers' logs a warning on every cast, here twice per tick of a running SDXL.
        torch.nn.Module.to(vae, dtype=torch.float32)
        try:
            yield torch.float32
        finally:
            torch.nn.Module.to(vae, dtype=torch.float16)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """SDXL's pipeline normalises latents by the VAE's ``latents_mean``/``latents_std`` where it has them."""
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if not self.xl or mean is None or std is None:
            return None
        view = (1, len(mean), 1, 1)
        return (
            torch.tensor(mean).view(view).to(like.device, like.dtype),
            torch.tensor(std).view(view).to(like.device, like.dtype),
        )

    def _scale_latents(self, encoded: torch.Tensor) -> torch.Tensor:
        factor, stats = self.pipe.vae.config.scaling_factor, self._latent_stats(encoded)
        scaled: torch.Tensor = factor * encoded if stats is None else (encoded - stats[0]) * factor / stats[1]
        return scaled

    def _unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        factor, stats = self.pipe.vae.config.scaling_factor, self._latent_stats(latents)
        unscaled: torch.Tensor = latents / factor if stats is None else latents * stats[1] / factor + stats[0]
        return unscaled

    @staticmethod
    def _cut(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The pipeline's ``get_timesteps`` on this request's own scheduler."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        timesteps: torch.Tensor = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps

    @staticmethod
    def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
        """The pipeline's ``prepare_extra_step_kwargs`` (eta 0.0)."""
        accepted = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = 0.0
        if "generator" in accepted:
            kwargs["generator"] = generators
        return kwargs

    def done(self, flight: Flight) -> bool:
        return flight.index >= len(flight.timesteps)

    def progress(self, flight: Flight) -> tuple[int, int]:
        return flight.index, len(flight.timesteps)

    @torch.inference_mode()
    def step(self, flights: Sequence[Flight]) -> list[Exception | None]:
        """One denoising step of every flight: one UNet forward over all their rows, each row at its own
        request's timestep, then per request the guidance combine and its scheduler's step.

        A failing forward raises (it fails every flight in it). After it, each flight's own step is
        guarded on its own: a scheduler that raises for one request (say at an edge timestep) fails that
        request only, reported in the returned list (None for a flight that stepped)."""
        inputs, timesteps, contexts = [], [], []
        for flight in flights:
            t = flight.timesteps[flight.index]
            model_input = flight.latents.repeat_interleave(2, dim=0) if flight.guided else flight.latents
            inputs.append(flight.scheduler.scale_model_input(model_input, t))
            timesteps.append(t.to(torch.float32).expand(flight.rows))
            contexts.append(flight.embeddings)
        sample, timestep, context = torch.cat(inputs), torch.cat(timesteps), torch.cat(contexts)
        added = None
        if self.xl:
            added = {key: torch.cat([f.added[key] for f in flights if f.added]) for key in ("text_embeds", "time_ids")}
        noise = self._forward(sample, timestep, context, added, flights)
        failures: list[Exception | None] = []
        start = 0
        for flight in flights:
            own = noise[start : start + flight.rows]
            start += flight.rows
            try:
                self._own_step(flight, own)
            except Exception as exc:
                failures.append(exc)
            else:
                failures.append(None)
        return failures

    def _own_step(self, flight: Flight, own: torch.Tensor) -> None:
        """What the pipeline does after its UNet call, for one request on its own rows."""
        if flight.guided:
            uncond, text = own[0::2], own[1::2]
            own = uncond + flight.request.guidance_scale * (text - uncond)
        t = flight.timesteps[flight.index]
        out = flight.scheduler.step(own, t, flight.latents, **flight.step_kwargs, return_dict=True)
        predicted = getattr(out, "pred_original_sample", None)
        flight.estimate = self._estimate(flight, own, t, predicted, self.prediction_type)
        flight.latents = out.prev_sample
        flight.index += 1

    @staticmethod
    def _estimate(
        flight: Flight, output: torch.Tensor, t: torch.Tensor, predicted: torch.Tensor | None, prediction_type: str
    ) -> torch.Tensor:
        """The first image's denoised estimate x0, for previews: the scheduler's own where it gives one, else
        from the model's output by what it predicts (x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps -
        sqrt(1 - a) x0): epsilon, x0 = (x_t - sqrt(1 - a) eps) / sqrt(a); v, x0 = sqrt(a) x_t - sqrt(1 - a) v;
        sample, x0 is the output. Never feeds back into a step."""
        if predicted is not None:
            first: torch.Tensor = predicted[0].detach()
            return first
        latent: torch.Tensor = flight.latents[0].detach()
        model_output = output[0].detach()
        if prediction_type == "sample":
            return model_output
        alphas = getattr(flight.scheduler, "alphas_cumprod", None)
        if alphas is None:
            return latent
        alpha = alphas[int(t)].to(latent.device, latent.dtype)
        estimate: torch.Tensor
        if prediction_type == "v_prediction":
            estimate = alpha.sqrt() * latent - (1 - alpha).sqrt() * model_output
        else:
            estimate = (latent - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
        return estimate

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        flights: Sequence[Flight],
    ) -> torch.Tensor:
        def unet(rows: slice) -> torch.Tensor:
            # SDXL only: the keyword stays out for SD, whose (graphed) UNet call is the plain one.
            extra = {} if added is None else {"added_cond_kwargs": {k: v[rows] for k, v in added.items()}}
            out: torch.Tensor = self.pipe.unet(
                sample[rows], timestep[rows], encoder_hidden_states=context[rows], return_dict=False, **extra
            )[0]
            return out

        if not self.per_image:
            return unet(slice(None))
        # per_image: every image's rows (2 under guidance, else 1) are a forward of their own.
        outputs, start = [], 0
        for flight in flights:
            per = 2 if flight.guided else 1
            for _ in range(flight.latents.shape[0]):
                outputs.append(unet(slice(start, start + per)))
                start += per
        return torch.cat(outputs)

    @torch.inference_mode()
    def decode(self, flights: Sequence[Flight]) -> list[np.ndarray]:
        """VAE-decode the flights that finish on this tick, in one call (they share a size)."""
        pipe = self.pipe
        latents = self._unscale_latents(torch.cat([flight.latents for flight in flights]))
        generators = [g for flight in flights for g in flight.generators]
        with self._vae_in_float32() as vae_dtype:
            image = pipe.vae.decode(latents.to(vae_dtype), return_dict=False, generator=generators)[0]
        images = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
        pixels = to_uint8(np.asarray(images, dtype=np.float32))
        out, start = [], 0
        for flight in flights:
            n = flight.latents.shape[0]
            out.append(pixels[start : start + n])
            start += n
        return out
