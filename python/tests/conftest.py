"""Fixtures: the demo model converted with tern.convert, and the CLI to compare against.

The CLI binary is $TERN_BIN (default: target/release/tern of this repository, built by
`cargo build --release -p tern`); tern-convert is $TERN_CONVERT_BIN (default:
target/release/tern-convert).
"""

import os
import subprocess
from pathlib import Path

import pytest

import tern

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "fixtures" / "austen-tiny"
# The CLI and Python runs that are compared use the same thread count.
THREADS = 2


def binary(var: str, name: str) -> Path:
    path = Path(os.environ.get(var, REPO / "target" / "release" / name))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `cargo build --release -p tern -p tern-convert` or set ${var}")
    return path


@pytest.fixture(scope="session")
def tern_bin() -> Path:
    return binary("TERN_BIN", "tern")


@pytest.fixture(scope="session")
def convert_bin() -> Path:
    return binary("TERN_CONVERT_BIN", "tern-convert")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "austen-tiny.tern"
    assert tern.convert(DEMO, path) is None
    return path


@pytest.fixture(scope="session")
def model(model_path) -> tern.Model:
    return tern.Model(model_path, n_threads=THREADS)


@pytest.fixture(scope="session")
def cli(tern_bin):
    """Runs `tern ARGS...`; returns its stdout (the test fails on a non-zero exit)."""

    def run(*args: str) -> str:
        p = subprocess.run([str(tern_bin), *map(str, args)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    return run
