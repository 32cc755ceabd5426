"""The structure docs/architecture.md describes, checked: dependencies run one way, the meeting
model stands without aiortc and aiohttp, private aiortc names stay in the glue."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conference", "recorder", "signaling")
# Who may import whom: conference <- recorder <- signaling.
ALLOWED = {"conference": {"conference"}, "recorder": {"conference", "recorder"}, "signaling": set(PACKAGES)}
MEETING_MODEL = ("roles", "layouts", "room", "config", "policy", "media", "store")
GLUE = ROOT / "conference" / "sfu" / "aiortc_glue.py"


def product_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).parts[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(package if node.level else (node.module or "").split(".")[0])
    return out


def test_dependencies_run_one_way() -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            (imports(path) & set(PACKAGES)) - ALLOWED[path.relative_to(ROOT).parts[0]]
        )
        for path in product_files()
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_the_recorder_and_the_meeting_model_need_no_web_or_webrtc_stack() -> None:
    for path in (ROOT / "recorder").rglob("*.py"):
        assert not imports(path) & {"aiohttp", "aiortc", "aioice"}, path
    for name in MEETING_MODEL:
        path = ROOT / "conference" / f"{name}.py"
        assert not imports(path) & {"aiohttp", "aiortc", "aioice"}, path


def test_no_import_indirection() -> None:
    for path in product_files():
        text = path.read_text()
        assert "import_module(" not in text and "__import__(" not in text, path


def test_private_aiortc_names_only_in_the_glue() -> None:
    """A module that uses aiortc reaches its private attributes (``obj._name``) only through
    conference/sfu/aiortc_glue.py; its own private attributes (``self._x``) are its business."""
    offenders = []
    for path in product_files():
        if path == GLUE or not imports(path) & {"aiortc", "aioice"}:
            continue
        own = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                own.add(node.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                own.add(node.attr)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr not in own
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders
