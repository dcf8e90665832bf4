"""cof_edge never imports torch: it imports and runs its pure parts in an interpreter where torch cannot load."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "torchvision"}:
                raise ImportError(f"{name} is not installed here (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_every_lean_module_imports_without_torch():
    done = run_python("""
        import pkgutil, cof_edge
        names = [m.name for m in pkgutil.walk_packages(cof_edge.__path__, "cof_edge.")]
        lean = [n for n in names if n != "cof_edge.backends.transformers_backend"]
        for name in lean:
            __import__(name)
        assert "cof_edge.cli" in lean and "cof_edge.engine" in lean and "cof_edge.data.vsearch" in lean, lean
        assert not any(m.split(".")[0] in {"torch", "transformers"} for m in sys.modules)
        print("imported", len(lean))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")


def test_choosing_the_transformers_backend_without_torch_says_what_to_install():
    done = run_python("""
        from cof_edge.backends.base import load_backend
        try:
            load_backend("transformers", "/nonexistent")
        except ImportError as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "pip install 'cof-edge[export]'" in done.stdout


def test_cli_help_runs_without_torch():
    done = run_python("""
        from cof_edge.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
    """)
    assert done.returncode == 0, done.stderr
    assert "ask" in done.stdout and "demo" in done.stdout and "data" in done.stdout


def test_installed_import_names_are_not_generic(tmp_path):
    """The folders export/ and training/ install as cof_export and cof_training, never as `export`/`training`."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import importlib.util
        for generic in ("export", "training", "benchmarks"):
            assert importlib.util.find_spec(generic) is None, generic
        import cof_export, cof_training
        print(cof_export.__name__, cof_training.__name__)
    """)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cof_export", "cof_training"]
