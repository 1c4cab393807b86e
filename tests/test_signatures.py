"""``daonet.split``, ``daonet.export`` and ``daonet.audit`` show their real signatures, keep them after any import
order, say what is missing in words, and the export code has no import circle."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import daonet
from daonet.errors import InputError

SRC = Path(daonet.__file__).resolve().parent


def test_export_is_a_plain_function_with_its_keywords() -> None:
    import daonet.audit.core  # noqa: F401  (importing submodules must not replace the functions)
    import daonet.exporting  # noqa: F401

    assert inspect.isfunction(daonet.export) and inspect.isfunction(daonet.split)
    params = inspect.signature(daonet.export).parameters
    assert list(params)[:2] == ["model", "out_dir"]
    for name in ("classes", "model_id", "input_spec", "public_data", "value_dtype", "max_revealed_energy",
                 "sign_key", "preprocess"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].annotation is not inspect.Parameter.empty, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert daonet.export.__doc__ and "classes" in daonet.export.__doc__


def test_audit_shows_the_audit_signature_and_stays_a_package() -> None:
    import daonet.audit
    from daonet.audit.api import audit

    assert inspect.signature(daonet.audit) == inspect.signature(audit)
    params = inspect.signature(daonet.audit).parameters
    assert list(params)[:3] == ["bundle", "public_data", "test_data"]
    assert params["budget"].kind is inspect.Parameter.KEYWORD_ONLY and params["budget"].default == "full"
    assert type(daonet.audit).__call__ is audit  # the function itself, not a (*args, **kwargs) wrapper
    assert callable(daonet.audit.run_audit) and daonet.audit.core.AuditConfig  # submodules stay reachable


def test_missing_classes_says_how_to_pass_them(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = daonet.split(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
                         drop_rate=0.5, example_input=torch.rand(3, 4))
    with pytest.raises(InputError, match=r"classes is missing: pass classes=\[\.\.\.\]"):
        daonet.export(model, tmp_path / "b")
    with pytest.raises(InputError, match="list of class names"):
        daonet.export(model, tmp_path / "b", classes="ab")
    with pytest.raises(InputError, match="'a' twice"):
        daonet.export(model, tmp_path / "b", classes=["a", "a"])
    with pytest.raises(InputError, match=r"value_dtype \(--value-dtype\) must be float32 or float16"):
        daonet.export(model, tmp_path / "b", classes=["a", "b"], value_dtype="int8")
    assert not (tmp_path / "b").exists()  # refused before anything is written


def _imports(path: Path) -> set[str]:
    """The daonet modules ``path`` imports anywhere (module level or inside functions), as dotted names."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("daonet")}


def test_no_import_circle_between_convert_and_exporting() -> None:
    convert, exporting = _imports(SRC / "convert.py"), _imports(SRC / "exporting.py")
    assert "daonet.exporting" in convert  # convert.export writes through export_model
    assert not any(m == "daonet.convert" or m.startswith("daonet.convert.") for m in exporting)
    assert not (SRC / "export.py").exists()  # no module shadows the function daonet.export


def test_import_daonet_stays_torch_free() -> None:
    code = "import sys, daonet; daonet.__version__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
