"""Pack what a bare GPU machine lacks into ``.gpu/`` (``make gpu-carry``), under the 64 MiB a call carries.

The device image has Python 3.12, a CUDA torch, transformers, aiohttp and grpcio, but no diffusers,
no Triton and none of the frontend's other packages, and it cannot reach a registry. So, built here:

* ``wheels/``: cp312 manylinux wheels of the missing pure and binary packages (``pip download``);
* ``stub-wheels/``: numpy 1.26 for the Python stub only (Triton 2.51's stub uses a pybind11 that
  predates numpy 2; the machine's own numpy 2 stays for everything else);
* ``triton.tar.xz``: the bundled ``tritonserver`` 2.51, the Python backend and its 3.12 stub, their
  libraries (less the 3.13 libpython nobody loads), and the ``tritonclient`` Python package.

Never weights: the full-size model is built on the GPU itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

from embedded.triton_server import REPO_ROOT

LIMIT_BYTES = 64 * 2**20
# name==version for cp312, matching pyproject's pins (and what they need that the image lacks).
WHEELS = (
    "diffusers==0.42.1",
    "pydantic==2.14.3",
    "pydantic-core==2.50.4",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "typing-inspection==0.4.5",
    "annotated-types==0.8.0",
    "typing-extensions==4.16.0",
    "aiosqlite==0.22.1",
    "standardwebhooks==1.1.0",
    "python-rapidjson==1.25",
    "protobuf==4.25.9",
)
STUB_WHEELS = ("numpy==1.26.4",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def triton_members(site_packages: Path) -> list[tuple[Path, str]]:
    """(file, name in the archive): the server, the Python backend, the 3.12 stub, libraries, tritonclient."""
    server = site_packages / "pytriton" / "tritonserver"
    members = [
        (server / "bin" / "tritonserver", "pytriton/tritonserver/bin/tritonserver"),
        (
            server / "python_backend_stubs" / "3.12" / "triton_python_backend_stub",
            "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub",
        ),
    ]
    members += [
        (f, f"pytriton/tritonserver/backends/python/{f.name}")
        for f in sorted((server / "backends" / "python").glob("*.*"))
    ]
    libs = site_packages / "nvidia_pytriton.libs"
    members += [
        (f, f"nvidia_pytriton.libs/{f.name}") for f in sorted(libs.iterdir()) if not f.name.startswith("libpython")
    ]
    client = site_packages / "tritonclient"
    members += [
        (f, f"tritonclient/{f.relative_to(client)}")
        for f in sorted(client.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    ]
    missing = [str(f) for f, _ in members if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"not in this environment (make setup first): {missing[:3]}")
    return members


def write_triton(members: list[tuple[Path, str]], target: Path) -> None:
    staging = target.with_suffix(".partial")
    with tarfile.open(staging, "w:xz") as archive:
        info = tarfile.TarInfo("pytriton/__init__.py")  # an empty package: only its folder is looked up
        archive.addfile(info)
        for path, name in members:
            archive.add(path, arcname=name)
    staging.replace(target)


def download(specs: tuple[str, ...], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *specs], check=True)


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tree_size() -> int:
    """What else travels: the tracked files and the untracked, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (REPO_ROOT / name.decode()).stat().st_size for name in listed if name and (REPO_ROOT / name.decode()).is_file()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".gpu")
    args = parser.parse_args(argv)
    import sysconfig

    site_packages = Path(sysconfig.get_paths()["purelib"])
    args.dest.mkdir(parents=True, exist_ok=True)
    archive = args.dest / "triton.tar.xz"
    if not archive.exists():
        print("packing tritonserver (xz, about a minute) ...", flush=True)
        write_triton(triton_members(site_packages), archive)
    download(WHEELS, args.dest / "wheels")
    download(STUB_WHEELS, args.dest / "stub-wheels")
    carried, tree = size_of(args.dest), tree_size()
    print(
        f"{args.dest}: {carried / 2**20:.1f} MiB, working tree {tree / 2**20:.1f} MiB,"
        f" limit {LIMIT_BYTES / 2**20:.0f} MiB"
    )
    if carried + tree > LIMIT_BYTES:
        print("error: over the 64 MiB a device call carries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
