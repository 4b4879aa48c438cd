"""``img2img``: turn an image file or URL into generated images on disk.

    img2img photo.png --prompt "a watercolor painting" --seed 120
    img2img https://example.com/photo.jpg --prompt "..." --json > answer.json

The service URL and key come from ``--url``/``--api-key`` or ``IMG2IMG_URL``/``IMG2IMG_API_KEY``.
Images are written as ``<run_id>_<seed>.<ext>`` in ``--out-dir``; their paths are printed, one a line.
The run is submitted and followed through its events; ``--cancel-after 2m`` gives it a deadline, and
Ctrl-C cancels it. A spinner shows on a terminal (stderr) and stays quiet when piped. Exit status: 0 done,
1 the service refused, or the run failed, was canceled or aborted (its reason is printed), 2 bad usage,
130 interrupted (the run is canceled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console

from .client import DEFAULT_URL, Img2ImgClient
from .models import Img2ImgError, Img2ImgRequest, Img2ImgResult, RunEvent, RunStatus, parse_duration

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2img",
        description="Generate images from an init image and a prompt (Stable Diffusion img2img).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", help="init image: a file path, or an http(s) URL the service fetches")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("-n", "--negative-prompt", default="")
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=50, help="num_inference_steps")
    parser.add_argument("--guidance", dest="guidance_scale", type=float, default=7.5, help="guidance_scale")
    parser.add_argument("--num-images", dest="num_images_per_prompt", type=int, default=1)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=None, help="same inputs + seed = same images")
    parser.add_argument("--scheduler", default="", help="e.g. euler, euler_a, ddim, dpm++ (default: the model's)")
    parser.add_argument(
        "--aesthetic-score", type=float, default=None, help="SDXL refiner only (default: the model's, 6.0)"
    )
    parser.add_argument(
        "--negative-aesthetic-score", type=float, default=None, help="SDXL refiner only (default: the model's, 2.5)"
    )
    parser.add_argument("--format", dest="output_format", choices=["png", "jpeg", "webp"], default="png")
    parser.add_argument("--webhook", dest="webhook_endpoint", default=None, help="POST the result there instead")
    parser.add_argument("--wait", action="store_true", help="with --webhook: also wait for the run and save it")
    parser.add_argument(
        "--cancel-after",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="deadline, e.g. 90s, 2m, 1h30m: the service cancels the run (or aborts it if still queued) then",
    )
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("."))
    parser.add_argument("--json", action="store_true", help="print the service's raw JSON answer to stdout")
    parser.add_argument("--url", default=os.environ.get("IMG2IMG_URL", DEFAULT_URL), help="service URL")
    parser.add_argument("--api-key", default=os.environ.get("IMG2IMG_API_KEY", ""), help="or IMG2IMG_API_KEY")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds")
    parser.add_argument(
        "--triton", default=None, metavar="HOST:PORT", help="bypass the frontend: call Triton's gRPC port directly"
    )
    return parser


@contextlib.contextmanager
def progress(console: Console, message: str) -> Iterator[Callable[[str], None]]:
    """A spinner on a terminal; nothing when stderr is piped or redirected. Yields a function that
    changes its message."""
    if console.is_terminal:
        with console.status(message) as status:
            yield lambda text: status.update(text)
    else:
        yield lambda text: None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        if args.triton:
            return run_direct(args, err)
        return run_service(args, err)
    except Img2ImgError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        return 1
    except OSError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        return INTERRUPTED


def _request(args: argparse.Namespace) -> Img2ImgRequest:
    is_url = args.input.startswith(("http://", "https://"))
    return Img2ImgRequest(
        prompt=args.prompt,
        image=None if is_url else Path(args.input),
        file_url=args.input if is_url else None,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        num_images_per_prompt=args.num_images_per_prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        webhook_endpoint=args.webhook_endpoint,
        strength=args.strength,
        scheduler=args.scheduler,
        output_format=args.output_format,
        aesthetic_score=args.aesthetic_score,
        negative_aesthetic_score=args.negative_aesthetic_score,
    )


def run_service(args: argparse.Namespace, err: Console) -> int:
    if not args.api_key:
        raise Img2ImgError("no API key: pass --api-key or set IMG2IMG_API_KEY")
    request = _request(args)
    with Img2ImgClient(args.url, args.api_key, timeout_s=args.timeout) as client:
        with progress(err, "submitting..."):
            if args.webhook_endpoint:
                answer = client.generate(request, cancel_after=args.cancel_after)
            else:
                answer = client.submit(request, cancel_after=args.cancel_after)
        if isinstance(answer, Img2ImgResult):
            return _report(answer, args)
        if args.webhook_endpoint and not args.wait:
            print(json.dumps(answer.raw) if args.json else f"{answer.run_id} {answer.message}")
            return 0
        return _follow(client, answer.run_id, args, err)


def describe(event: RunEvent) -> str:
    """The spinner's line for an event: the run's status, or its step while it runs."""
    if event.progress is not None:
        return f"run {event.run.run_id}: step {event.progress.step}/{event.progress.total}"
    return f"run {event.run.run_id}: {event.status}..."


def _follow(client: Img2ImgClient, run_id: str, args: argparse.Namespace, err: Console) -> int:
    """Follow a run's events to its end and report it; Ctrl-C cancels it."""
    final: RunStatus | None = None
    try:
        with progress(err, f"run {run_id}: queued...") as update, contextlib.closing(client.events(run_id)) as events:
            for event in events:
                update(describe(event))
                if event.final:
                    final = event.run
                    break
    except KeyboardInterrupt:
        try:
            status = client.cancel(run_id)
        except Img2ImgError as exc:
            err.print(f"interrupted; could not cancel run {run_id}: {exc}", highlight=False)
            return INTERRUPTED
        err.print(f"canceled run {run_id} (status: {status.status})", highlight=False)
        if args.json:
            print(json.dumps(status.raw))
        return INTERRUPTED
    if final is None:
        raise Img2ImgError(f"the events of run {run_id} ended before a final status")
    if final.result is not None:
        return _report(final.result, args)
    if args.json:
        print(json.dumps(final.raw))
    err.print(f"[bold red]error:[/] {final.reason}", highlight=False, markup=True)
    return 1


def _report(result: Img2ImgResult, args: argparse.Namespace) -> int:
    paths = result.save(args.out_dir)
    if args.json:
        print(json.dumps(result.raw))
    else:
        for path in paths:
            print(path)
    return 0


def run_direct(args: argparse.Namespace, err: Console) -> int:
    from .triton import TritonImg2ImgClient

    if args.input.startswith(("http://", "https://")):
        raise Img2ImgError("--triton takes a local image file (URLs are fetched by the frontend only)")
    with TritonImg2ImgClient(args.triton, timeout_s=args.timeout) as client, progress(err, "generating..."):
        generated = client.generate(
            args.prompt,
            Path(args.input).read_bytes(),
            negative_prompt=args.negative_prompt,
            strength=args.strength,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            num_images_per_prompt=args.num_images_per_prompt,
            seed=args.seed,
            scheduler=args.scheduler,
            aesthetic_score=args.aesthetic_score,
            negative_aesthetic_score=args.negative_aesthetic_score,
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, png in zip(generated.seeds, generated.png_images(), strict=True):
        path = args.out_dir / f"triton_{seed}.png"
        path.write_bytes(png)
        paths.append(path)
    if args.json:
        print(json.dumps({"seeds": generated.seeds, "files": [str(p) for p in paths]}))
    else:
        for path in paths:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
