"""The import tree: a file's path is its import name, for Python and for static tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("export", "model_repository", "serve", "client", "benchmarks", "gateway", "deploy")


def test_top_level_folders_are_the_packages() -> None:
    for name in PACKAGES:
        link = ROOT / "vlpserve" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, name
        assert (ROOT / name / "__init__.py").is_file(), name


def test_wheel_holds_every_module_under_its_import_name(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves its build folder in the source tree.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*cache")
    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*wheel, "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vlpserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        f"vlpserve/{path.relative_to(ROOT)}"
        for name in PACKAGES
        for path in (ROOT / name).rglob("*.py")
    }
    assert sources and sources <= names, sorted(sources - names)


def test_imports_from_the_repository_root() -> None:
    """The local vlpserve/ folder shadows the installed package there: it must be whole."""
    modules = ("client.calls", "serve.launcher", "model_repository.runtime.params")
    code = "; ".join(f"import vlpserve.{name}" for name in modules)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_cross_package_type_error_is_caught(tmp_path: Path) -> None:
    """mypy follows first-party imports (no silent Any): a wrong use of a value taken from
    vlpserve.client is an error, as one from vlpserve.contract is."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from vlpserve.client.calls import ClientOptions\n"
        "from vlpserve.contract import Family\n\n"
        "timeout: str = ClientOptions().timeout_s.upper()\n"
        "family: int = Family.CLIP.value\n"
    )
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run([str(mypy), str(planted)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout
    assert 'planted.py:4: error: "float" has no attribute "upper"' in done.stdout, done.stdout
    assert "planted.py:5: error: Incompatible types in assignment" in done.stdout, done.stdout


def test_export_command_imports_no_client_or_bench() -> None:
    code = (
        "import sys; from vlpserve.cli import parser; parser(); "
        "found = [m for m in sys.modules if m.split('.')[0] in ('tritonclient', 'grpc') "
        "or m.startswith(('vlpserve.benchmarks', 'vlpserve.client'))]; print(found)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def _docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``path`` out of the build context (the
    path, or a folder above it, matches; ``**/`` also matches no folder)."""
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        candidates = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            return True
    return False


def test_the_image_build_context_leaves_out_secrets_and_environments() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for left_out in (
        ".git/config",
        ".venv/lib/python3.11/site-packages/numpy/__init__.py",
        ".venv-client/bin/python",
        "build/bench/export-clip/text_encoder.onnx",
        "build/tls/server_key.pem",
        "tests/data/client.key",
        "vlpserve.egg-info/PKG-INFO",
        "serve/__pycache__/launcher.cpython-311.pyc",
    ):
        assert _docker_ignores(left_out, patterns), left_out
    for kept in ("pyproject.toml", "serve/launcher.py", "deploy/Dockerfile", "README.md"):
        assert not _docker_ignores(kept, patterns), kept
