"""tern.convert, tern.verify and the package's version."""

import re
import subprocess
from pathlib import Path

import pytest

import tern
from conftest import DEMO, REPO


def test_version_is_the_workspace_version():
    cargo = (REPO / "Cargo.toml").read_text()
    section = cargo.split("[workspace.package]", 1)[1]
    want = re.search(r'^version = "([^"]+)"', section, re.M).group(1)
    assert tern.__version__ == want
    assert re.fullmatch(r"\d+\.\d+\.\d+", tern.__version__)


@pytest.mark.parametrize("output_type, flags", [("f16", []), ("f32", ["--embed-type", "f32"]), ("q8", ["--output-q8"])])
def test_convert_writes_the_same_bytes_as_tern_convert(tmp_path, convert_bin, output_type, flags):
    ours = tmp_path / "python.tern"
    theirs = tmp_path / "cli.tern"
    assert tern.convert(str(DEMO), ours, output_type=output_type) is None
    subprocess.run([convert_bin, DEMO, "-o", theirs, *flags], check=True, capture_output=True)
    assert ours.read_bytes() == theirs.read_bytes()
    assert not Path(str(ours) + ".partial").exists()
    tern.verify(ours)


def test_convert_refuses_bad_arguments_and_leaves_no_file(tmp_path):
    dst = tmp_path / "out.tern"
    with pytest.raises(ValueError, match=r'output_type "int4" is not one of "f16", "f32", "q8"'):
        tern.convert(DEMO, dst, output_type="int4")
    with pytest.raises(FileNotFoundError) as e:
        tern.convert(tmp_path / "no-such-folder", dst)
    assert e.value.filename == str(tmp_path / "no-such-folder")
    # A folder without weights: the converter's own check, as a TernError.
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_bytes((DEMO / "config.json").read_bytes())
    with pytest.raises(tern.TernError, match="no model.safetensors"):
        tern.convert(incomplete, dst)
    assert list(tmp_path.glob("out.tern*")) == []


def test_verify_names_the_bad_tensor(tmp_path, model_path):
    assert tern.verify(model_path) is None
    data = bytearray(model_path.read_bytes())
    # The middle of the file is inside the embedding (1.5 of its 2.6 MB).
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tern"
    bad.write_bytes(bytes(data))
    with pytest.raises(tern.TernError, match="checksum mismatch in tensor token_embd"):
        tern.verify(bad)
    assert issubclass(tern.TernError, Exception)


def test_bad_files_are_exceptions(tmp_path, model_path):
    missing = tmp_path / "missing.tern"
    for call in (tern.verify, tern.Model):
        with pytest.raises(FileNotFoundError) as e:
            call(missing)
        assert e.value.filename == str(missing)
        assert str(missing) in str(e.value)
    truncated = tmp_path / "truncated.tern"
    truncated.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(tern.TernError, match="truncated"):
        tern.Model(truncated)
    garbage = tmp_path / "garbage.tern"
    garbage.write_bytes(b"not a model" * 100)
    with pytest.raises(tern.TernError, match="garbage.tern"):
        tern.Model(garbage)
    with pytest.raises(tern.TernError, match="is a folder"):
        tern.Model(tmp_path)


def test_every_public_function_has_a_docstring():
    names = ["convert", "verify", "TernError", "Model", "Generation"]
    assert all((getattr(tern, n).__doc__ or "").strip() for n in names)
    for cls in (tern.Model, tern.Generation):
        for name in dir(cls):
            if name.startswith("__") and name not in ("__init__", "__next__", "__iter__"):
                continue
            attr = getattr(cls, name)
            if name == "__init__":
                continue  # the class docstring says how to call it
            assert (attr.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"


def test_package_files_are_installed():
    from pathlib import Path

    root = Path(tern.__file__).parent
    assert (root / "py.typed").is_file()
    assert "def logits" in (root / "__init__.pyi").read_text()
