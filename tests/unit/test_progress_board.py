"""The model's progress side channel (``progress_board``) and its live previews (``previews``), without Triton."""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from previews import LatentPreviewer
from progress_board import Progress, ProgressBoard, board_folder


def test_a_post_replaces_the_last_one_and_is_gone_once_removed(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path / "board")
    assert board.read("run-1") is None
    board.post("run-1", Progress(1, 9, b"\xff\xd8one"))
    board.post("run-1", Progress(2, 9, b"\xff\xd8one"))
    board.post("run/../2", Progress(5, 21))  # any id: files are named by its hash
    assert board.read("run-1") == Progress(2, 9, b"\xff\xd8one")
    assert board.read("run/../2") == Progress(5, 21, b"")
    assert sorted(p.suffix for p in board.folder.iterdir()) == [".json", ".json"]  # no staging file left
    board.remove("run-1")
    board.remove("never-posted")
    assert board.read("run-1") is None and board.read("run/../2") is not None


def test_close_removes_the_folder_only_once_it_is_empty_and_a_reader_creates_none(tmp_path: Path) -> None:
    reader = ProgressBoard(tmp_path / "board", create=False)
    assert not reader.folder.exists() and reader.read("run-1") is None
    board = ProgressBoard(tmp_path / "board")
    board.post("run-1", Progress(1, 2))
    board.close()
    assert board.read("run-1") == Progress(1, 2)  # a post left: the folder stays
    board.remove("run-1")
    board.close()
    assert not board.folder.exists()
    board.close()  # already gone: no error


def test_sweep_removes_only_posts_older_than_the_limit(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path)
    board.post("old", Progress(1, 2))
    board.post("new", Progress(1, 2))
    old = board._path("old")
    os.utime(old, (old.stat().st_atime - 7200, old.stat().st_mtime - 7200))
    assert board.sweep(older_than_s=3600) == 1
    assert board.read("old") is None and board.read("new") is not None


def test_both_models_of_one_repository_find_one_folder_and_other_repositories_another(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    (repository / "sd_img2img").mkdir(parents=True)
    (repository / "sd_img2img" / "config.pbtxt").write_text("name: 'sd_img2img'")
    (repository / "sd_img2img_progress").mkdir()
    # sd_img2img is given its own folder, sd_img2img_progress looks up from its own: the same board
    assert board_folder(repository / "sd_img2img") == board_folder(repository)
    assert board_folder(tmp_path / "another_repository") != board_folder(repository)


class LinearVae(torch.nn.Module):
    """Decodes each latent pixel to a flat 8x8 block of ``latent @ factors + bias`` (scaled by ``scaling_factor``)."""

    def __init__(self, factors: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.factors, self.bias = factors, bias
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(latent_channels=4, block_out_channels=[1, 2, 3, 4], scaling_factor=0.5)

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        latents = z * self.config.scaling_factor
        rgb = torch.einsum("nchw,cr->nrhw", latents, self.factors) + self.bias[None, :, None, None]
        return (rgb.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3),)


def test_the_preview_map_is_fit_to_the_served_vae() -> None:
    factors = torch.tensor([[0.3, 0.2, 0.3], [0.3, 0.5, 0.2], [-0.3, 0.2, 0.3], [-0.2, -0.3, -0.7]])
    bias = torch.tensor([0.1, -0.05, 0.02])
    previewer = LatentPreviewer.fit(LinearVae(factors, bias))
    assert torch.allclose(previewer.factors, factors, atol=1e-5)
    assert torch.allclose(previewer.bias, bias, atol=1e-5)


def test_a_preview_is_a_small_jpeg_of_the_latents_colours() -> None:
    previewer = LatentPreviewer(torch.eye(4, 3), torch.zeros(3))
    latent = torch.zeros(4, 8, 16)
    latent[0] = 1.0  # all red (channel 0 -> R), clamped to [-1, 1] then to 0..255
    picture = previewer.rgb(latent)
    assert picture.shape == (8, 16, 3) and picture.dtype == np.uint8
    assert (picture[..., 0] == 255).all() and (picture[..., 1] == 128).all()
    decoded = Image.open(io.BytesIO(previewer.jpeg(latent)))
    assert decoded.format == "JPEG" and decoded.size == (16, 8)
    with pytest.raises(RuntimeError):
        previewer.rgb(torch.zeros(3, 8, 8))  # not the latent's channels


def test_the_load_is_replaced_whole_read_back_and_removed_with_the_folder(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path / "board")
    assert board.read_load() is None
    board.post_load({"jobs": 1, "rows_active": 2, "rows_waiting": 0, "sizes": [[64, 64]]})
    board.post_load({"jobs": 2, "rows_active": 2, "rows_waiting": 4, "sizes": [[64, 64], [128, 96]]})
    assert board.read_load() == {"jobs": 2, "rows_active": 2, "rows_waiting": 4, "sizes": [[64, 64], [128, 96]]}
    assert [p.name for p in board.folder.iterdir()] == ["load.json"]  # no staging file left
    board.close()
    assert not board.folder.exists()
