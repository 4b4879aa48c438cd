"""Triton Python-backend model: the progress ``sd_img2img``'s step engine posted for a request id.

No weights and no torch: it reads ``progress_board`` posts (``sd_img2img/1/progress_board.py``, found
beside this model in the same repository) and answers every request at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# sd_img2img's folder: its stub_path (first, before numpy) and progress_board.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sd_img2img" / "1"))
from stub_path import honour_pythonpath  # noqa: E402

honour_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from progress_board import Progress, ProgressBoard, board_folder  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Find the board of this model repository (the one sd_img2img posts to)."""
        repository = Path(args["model_repository"]).resolve().parent
        self.model_name = json.loads(args["model_config"])["name"]
        self.board = ProgressBoard(board_folder(repository), create=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order: the request's last post, or -1/-1/empty; and the model's load."""
        responses = []
        load = self.board.read_load()
        load_json = json.dumps(load).encode() if load is not None else b""
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "request_id")
            raw = tensor.as_numpy().reshape(-1)[0] if tensor is not None else b""
            request_id = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            progress = self.board.read(request_id) if request_id else None
            if progress is None:
                progress = Progress(-1, -1)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("step", np.asarray([progress.step], dtype=np.int32)),
                        pb_utils.Tensor("total", np.asarray([progress.total], dtype=np.int32)),
                        pb_utils.Tensor("preview", np.asarray([progress.preview], dtype=np.object_)),
                        pb_utils.Tensor("load", np.asarray([load_json], dtype=np.object_)),
                    ]
                )
            )
        return responses
