"""The GPU report's CPU-testable parts: invariance plans, design choice, report writing, the carry.

The measurements themselves need a GPU (``bash bench/gpu/run.sh``); these run on recorded JSON and
small CPU modules. docs/gpu-run-1.json is a real H200 run (the map and the designs).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from batch_invariance import (
    DEFAULT_PLANS,
    InvariancePlan,
    apply_plan,
    fixed_rows,
    parse_plan,
    remove_plan,
)
from cuda_graphs import GraphedUNet

from bench.gpu import carry, designs, e2e, report
from bench.gpu.__main__ import main as gpu_main
from embedded.triton_server import DEFAULT_MODEL_REPOSITORY

DOCS = Path(__file__).resolve().parents[2] / "docs"
RECORDED = json.loads((DOCS / "gpu-run-1.json").read_text())


# -- plans --------------------------------------------------------------------------------------------
def test_auto_plan_is_the_device_kinds_measured_default() -> None:
    assert parse_plan("auto", "cpu") == DEFAULT_PLANS["cpu"]
    assert parse_plan("", "cuda") == DEFAULT_PLANS["cuda"]
    assert DEFAULT_PLANS["cuda"].pin_kernels and not DEFAULT_PLANS["cpu"].pin_kernels


def test_plan_spec_round_trips_and_pins_only_on_cuda() -> None:
    plan = parse_plan("conv2d:16, vae_decode", "cuda")
    assert plan == InvariancePlan({"conv2d": 16, "vae_decode": 1}, pin_kernels=True)
    assert parse_plan(plan.spec(), "cpu").rows == plan.rows
    assert not parse_plan(plan.spec(), "cpu").pin_kernels


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("conv3d", "unknown kind 'conv3d'"),
        ("linear,linear:2", "'linear' is named twice"),
        ("linear:x", "rows for 'linear' must be an integer but is 'x'"),
        ("linear:65", "rows for 'linear' must be 1 to 64 but is 65"),
    ],
)
def test_bad_plans_name_the_kind_and_the_value(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_plan(value, "cpu")


def test_fixed_rows_chunks_pads_and_passes_non_batch_arguments_through() -> None:
    seen: list[tuple[int, ...]] = []

    def forward(x: torch.Tensor, scale: float, *, context: torch.Tensor, bias: torch.Tensor) -> Any:
        seen.append((x.shape[0], context.shape[0], bias.shape[0]))
        return (x * scale + context.sum(dim=1, keepdim=True) + bias, {"rows": x[:, :1]})

    x, context, bias = torch.arange(12.0).reshape(6, 2), torch.ones(6, 3), torch.tensor([10.0, 20.0])
    out, extra = fixed_rows(forward, 4)(x, 2.0, context=context, bias=bias)
    assert seen == [(4, 4, 2), (4, 4, 2)]  # 6 rows: 4, then 2 padded to 4; the 2-vector is not a batch
    assert torch.equal(out, x * 2.0 + 3.0 + bias)
    assert torch.equal(extra["rows"], x[:, :1])
    one = fixed_rows(forward, 1)(x, 2.0, context=context, bias=bias)[0]
    assert torch.equal(one, out) and seen[-6:] == [(1, 1, 2)] * 6


class _Vae(torch.nn.Module):
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        return (z + 1,)


class _Pipe:
    def __init__(self) -> None:
        self.unet = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.GroupNorm(1, 2))
        self.text_encoder = torch.nn.Sequential(torch.nn.Linear(3, 3))
        self.vae = _Vae()


def test_apply_plan_wraps_only_the_named_kinds_and_remove_plan_undoes_it() -> None:
    pipe = _Pipe()
    x = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    before = pipe.unet(x)
    assert apply_plan(pipe, InvariancePlan({"conv2d": 1, "vae_decode": 1})) == 2
    assert "forward" in pipe.unet[0].__dict__ and "forward" not in pipe.unet[1].__dict__
    assert "forward" not in pipe.text_encoder[0].__dict__ and "decode" in pipe.vae.__dict__
    assert torch.allclose(pipe.unet(x), before, atol=1e-5)  # the same values, computed a sample at a time
    remove_plan(pipe)
    assert "forward" not in pipe.unet[0].__dict__ and "decode" not in pipe.vae.__dict__


def test_graphed_unet_runs_eagerly_off_the_gpu() -> None:
    calls = []

    def forward(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return (sample * 2,)

    graphed = GraphedUNet(forward)
    out = graphed(torch.ones(2, 4), 10, encoder_hidden_states=torch.zeros(2, 3), return_dict=False)
    assert torch.equal(out[0], torch.full((2, 4), 2.0)) and calls == [{"return_dict": False}]
    assert graphed.graphs == {}


# -- designs ------------------------------------------------------------------------------------------
def test_candidates_from_the_recorded_h200_map_split_what_varied() -> None:
    found = {d.name: d for d in designs.candidates(RECORDED["map"]["pinned"])}
    kinds = RECORDED["map"]["pinned"]["layers"]["kinds"]
    varying = {kind for kind, entry in kinds.items() if entry["varies_alone"]}
    padded_ok = not any(kinds[k]["varies_padded"] for k in varying)
    assert set(found["pinned+padded"].rows) == varying | {"vae_decode"}
    assert set(found["pinned+padded"].rows.values()) == ({designs.PADDED_ROWS, 1} if padded_ok else {1})
    assert found["pinned"].rows == {"vae_decode": 1}  # the VAE decode differed alone vs. batched
    assert all(d.pinned for d in found.values())


def test_candidates_pad_when_padding_made_the_varying_kinds_exact() -> None:
    entry = {"varies_alone": 3, "varies_padded": 0}
    found = designs.candidates({"layers": {"kinds": {"conv2d": entry}}, "components": {"vae_decode": 0.0}})
    assert [d.spec() for d in found] == [
        "",
        "conv2d:16",
        "conv1x1_gemm,conv2d:1",
        "conv2d_gemm",
        "conv2d:1",
        "conv2d:1,linear:1,vae_decode:1",
    ]


def test_without_a_map_the_shipped_plan_says_what_varies() -> None:
    shipped = {"conv2d": 1, "linear": 1, "attention": 1, "vae_decode": 1}  # the CPU default
    found = {d.name: d.spec() for d in designs.candidates({"layers": {"kinds": {}}, "components": {}}, shipped)}
    assert found["gemm_conv"] == "conv2d_gemm,linear:1,attention:1,vae_decode:1"
    assert found["gemm_1x1"] == "conv1x1_gemm,conv2d:1,linear:1,attention:1,vae_decode:1"


def test_choose_takes_the_fastest_exact_design() -> None:
    results = [
        {"name": "fast_inexact", "identical": False, "b8": {"images_per_s": 9.0}},
        {"name": "slow", "identical": True, "b8": {"images_per_s": 1.0}, "b1": {"p50_ms": 100.0}},
        {"name": "quick", "identical": True, "b8": {"images_per_s": 2.0}, "b1": {"p50_ms": 900.0}},
        {"name": "untimed", "identical": True},
    ]
    chosen = designs.choose(results)
    assert chosen is not None and chosen["name"] == "quick"
    assert designs.choose(results[:1]) is None


# -- the report ---------------------------------------------------------------------------------------
def test_report_renders_every_measured_figure_from_the_recorded_run() -> None:
    text = report.render(RECORDED)
    assert RECORDED["environment"]["gpu"] in text and RECORDED["environment"]["torch"] in text
    for name, design in RECORDED["designs"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{design['b8']['images_per_s']:.2f}" in row
        assert ("| yes |" in row) == design["check"]["identical"]
    for kind, entry in RECORDED["map"]["pinned"]["layers"]["kinds"].items():
        assert f"| {kind} | {entry['layers']} | {entry['varies_alone']} | {entry['varies_padded']} |" in text
    gain = RECORDED["direct"]["batched"]["batching_gain"]
    assert f"{gain:.2f}x" in text


def test_merged_reports_keep_earlier_phases_and_let_later_ones_win() -> None:
    merged = report.merge([{"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": 4}])
    assert merged == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}


def test_failed_starts_show_the_telling_line() -> None:
    log = "I1129 table\n| x | y |\nE1129 model.py] ERROR: Failed: Could not import module 'X'. Are ...\nI1129 done"
    assert e2e.error_lines(log).startswith("E1129")
    data = {"e2e": {"failed": {"kind_gpu": log}}, "skipped": {"speed": "10 s left"}}
    text = report.render(data)
    assert "- kind_gpu: `E1129 model.py] ERROR: Failed: Could not import module 'X'. Are ...`" in text
    assert "- speed: 10 s left" in text


def test_report_main_writes_markdown_and_merged_json(tmp_path: Path) -> None:
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"e2e": {"c8": {"images_s": 3.25, "p50_ms": 2000.0, "p99_ms": 2500.0}}}))
    markdown, merged = tmp_path / "gpu.md", tmp_path / "merged.json"
    assert (
        report.main([str(DOCS / "gpu-run-1.json"), str(second), "--markdown", str(markdown), "--json", str(merged)])
        == 0
    )
    assert "| 8 | uniform | 3.25 | 2000 | 2500 |" in markdown.read_text()
    assert json.loads(merged.read_text())["map"] == RECORDED["map"]


# -- the command and what it carries ------------------------------------------------------------------
def test_unknown_phase_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_main(["--model-path", str(tmp_path), "--out", str(tmp_path / "out"), "--phases", "direct,warp"])
    assert exit_info.value.code == 2 and "unknown ['warp']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_e2e_edits_lines_the_shipped_config_has() -> None:
    config = (DEFAULT_MODEL_REPOSITORY / "sd_img2img" / "config.pbtxt").read_text()
    for line in (e2e.PARAMETER, e2e.GRAPHS, e2e.DYNAMIC_BATCHING):
        assert line in config


def _fake_site(root: Path) -> Path:
    server = root / "pytriton" / "tritonserver"
    for name in (
        "bin/tritonserver",
        "python_backend_stubs/3.12/triton_python_backend_stub",
        "python_backend_stubs/3.11/triton_python_backend_stub",
        "backends/python/libtriton_python.so",
        "backends/python/triton_python_backend_utils.py",
    ):
        (server / name).parent.mkdir(parents=True, exist_ok=True)
        (server / name).write_bytes(b"x")
    libs = root / "nvidia_pytriton.libs"
    libs.mkdir()
    for name in ("libtritonserver-1.so", "libpython3-2.13.so.1.0", "libcudart-3.so.12"):
        (libs / name).write_bytes(b"y")
    (root / "tritonclient" / "grpc").mkdir(parents=True)
    (root / "tritonclient" / "grpc" / "__init__.py").write_text("")
    return root


def test_carry_packs_the_server_for_312_without_the_313_libpython(tmp_path: Path) -> None:
    members = carry.triton_members(_fake_site(tmp_path / "site"))
    names = {name for _, name in members}
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in names
    assert not any("3.11" in n or "libpython" in n for n in names)
    assert {"nvidia_pytriton.libs/libcudart-3.so.12", "tritonclient/grpc/__init__.py"} <= names
    carry.write_triton(members, tmp_path / "triton.tar.xz")
    with tarfile.open(tmp_path / "triton.tar.xz") as archive:
        assert set(archive.getnames()) == names | {"pytriton/__init__.py"}


def test_carry_refuses_an_environment_without_the_server(tmp_path: Path) -> None:
    site = _fake_site(tmp_path / "site")
    (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").unlink()
    with pytest.raises(FileNotFoundError, match="make setup first"):
        carry.triton_members(site)


# -- CUDA graphs: the bounded, bucketed cache -------------------------------------------------------------
def test_row_buckets_pad_any_count_by_at_most_half_up_to_the_cap() -> None:
    from cuda_graphs import bucket_rows, row_buckets

    buckets = row_buckets(32)
    assert buckets == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    for rows in range(1, 33):
        bucket = bucket_rows(rows, buckets)
        assert bucket is not None and rows <= bucket <= max(1, rows * 3 // 2 + 1)
    assert bucket_rows(33, buckets) is None  # above the cap: that forward runs eagerly
    assert row_buckets(20)[-1] == 20


def test_graphed_unet_pads_rows_with_zeros() -> None:
    from cuda_graphs import pad_rows

    padded = pad_rows(torch.ones(3, 2), 4)
    assert torch.equal(padded, torch.tensor([[1.0, 1.0]] * 3 + [[0.0, 0.0]]))
    assert pad_rows(padded, 4) is padded


# -- the stub check and the rehearsal's verdict ---------------------------------------------------------
def test_stub_check_chooses_the_first_path_that_carries_tensors_and_imports() -> None:
    from bench.gpu import stub_check

    results = {
        "carried_numpy": {"tensors_ok": True, "imports_ok": False},
        "machine_numpy": {"tensors_ok": False, "imports_ok": True},
    }
    assert stub_check.choose(results) is None
    results["carried_numpy"]["imports_ok"] = True
    assert stub_check.choose(results) == "carried_numpy"


def test_rehearsal_fails_a_report_that_would_not_have_served() -> None:
    from bench.gpu import rehearsal

    answered = {"requests": 4, "answered": 4, "errors": {}}
    good: dict[str, Any] = {
        "environment": {"packages": {"torch": "2.11.0"}},
        "phase_s": dict.fromkeys(gpu_phases(), 1.0),
        "e2e": {
            "c1": answered,
            "c8": answered,
            "mixed": {"c1": answered},
            "determinism": {"identical": True},
        },
        "done": True,
    }
    assert rehearsal.problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["e2e"]["c8"] = {"requests": 32, "answered": 0, "errors": {"503": 32}}
    bad["e2e"]["determinism"]["identical"] = False
    bad["errors"] = {"stub": "Traceback ...\nRuntimeError: no stub path carried tensors"}
    found = rehearsal.problems(bad)
    assert any("c8: 0 of 32" in p for p in found) and any("determinism" in p for p in found)
    assert any("phase stub failed: RuntimeError" in p for p in found)


def gpu_phases() -> tuple[str, ...]:
    from bench.gpu.__main__ import PHASES

    return PHASES
