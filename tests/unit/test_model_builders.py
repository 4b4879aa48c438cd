"""The model builders: SD 1.5's exact size without allocating it, and never writing into a folder of yours."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from embedded import full_size, sd15_model, sdxl_model, tiny_model


def test_the_full_size_build_has_sd15s_parameter_counts() -> None:
    # Meta device: shapes only, nothing allocated (the real build is 4.3 GB).
    counts = sd15_model.parameter_counts(sd15_model.build_components("meta"))
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert counts == sd15_model.SD15_PARAMETERS


def test_the_full_size_sdxl_build_has_sdxl_base_s_parameter_counts() -> None:
    counts = full_size.parameter_counts(sdxl_model.build_components("meta"))
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    assert counts == sdxl_model.SDXL_PARAMETERS


def test_the_tokenizer_has_clips_vocabulary_size_and_specials_at_the_end() -> None:
    vocab, merges = sd15_model.clip_vocabulary()
    assert len(vocab) == 49_408 and len(merges) == 49_408 - 512 - 2
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49_406, 49_407)


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "builder", [tiny_model.build, sd15_model.build, sdxl_model.build], ids=["tiny", "sd15", "sdxl"]
)
def test_builders_refuse_a_folder_they_did_not_make(tmp_path: Path, builder: object) -> None:
    checkpoint = tmp_path / "my-checkpoint"
    (checkpoint / "unet").mkdir(parents=True)
    (checkpoint / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (checkpoint / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"real weights")
    before = fingerprint(checkpoint)
    with pytest.raises(FileExistsError, match="did not make"):
        builder(checkpoint)  # type: ignore[operator]
    assert fingerprint(checkpoint) == before


def test_a_tiny_build_killed_halfway_leaves_nothing_and_the_next_build_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It builds beside the folder and renames into place: a half-written, stampless folder would be
    refused by every later build as "not ours"."""
    folder = tmp_path / "tiny"
    real = tiny_model.build_pipeline()

    class Killed(BaseException):
        pass

    class HalfSaved:
        def __init__(self, **_: object) -> None:
            pass

        def save_pretrained(self, path: Path, **_: object) -> None:
            (Path(path) / "model_index.json").write_text("{}")  # some files written, then the process dies
            raise Killed

    monkeypatch.setattr(tiny_model, "build_pipeline", HalfSaved)
    with pytest.raises(Killed):
        tiny_model.build(folder)
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tiny_model, "build_pipeline", lambda **_: real)
    assert tiny_model.build(folder) and tiny_model.is_built(folder)


@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_each_family_s_tiny_build_is_saved_as_its_published_checkpoint_is_and_detected_as_that_family(
    tmp_path: Path, family: str
) -> None:
    from families import detect

    folder = tmp_path / family
    assert tiny_model.build(folder, family=family) and tiny_model.is_built(folder, family)
    assert not tiny_model.is_built(folder, "sdxl" if family != "sdxl" else "sd1")  # another family: rebuilt
    published = {
        "sd1": "StableDiffusionImg2ImgPipeline",
        "sd2-v": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    }
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == published[family]
    assert detect(str(folder), local_files_only=True).name == family
