"""kvtier/kernels/ ships as kvtier.kernels and never as a top-level `kernels` (an unrelated PyPI name, which
transformers 5.25 depends on: a top-level kernels/ folder in the checkout shadowed it in the tests)."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_kvtier_kernels_comes_from_its_folder_and_nothing_in_the_checkout_shadows_pypi_kernels():
    # cwd is the checkout, whose root is on sys.path when the tests run: that is where the old kernels/ shadowed
    # PyPI's `kernels` (installed or not, its origin must not be ours)
    code = ("import importlib.util, kvtier.kernels, kvtier.kernels.reference;"
            "spec = importlib.util.find_spec('kernels');"
            "print(kvtier.kernels.__file__); print(spec.origin if spec else None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    kernels_file, top_level = out.stdout.splitlines()
    assert Path(kernels_file).parent == ROOT / "kvtier" / "kernels" or "site-packages" in kernels_file
    assert top_level == "None" or Path(top_level).parents[1] != ROOT  # PyPI's (in .venv or elsewhere), if any
    assert not (ROOT / "kernels").exists()


def test_wheel_maps_kernels_under_kvtier(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("kvtier-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kvtier/kernels/__init__.py" in names and "kvtier/kernels/reference.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    assert "kvtier/tiers/disk/_fileio.pyi" in names  # the compiled routine's stub ships with its package


def test_import_and_help_do_not_load_torch(tmp_path):
    code = ("import sys, contextlib, io, kvtier, kvtier.integrations, kvtier.cli.main as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    cli.main(['--help'])\n"
            "for command in ('demo', 'generate', 'info', 'bench', 'cache'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        cli.main([command, '--help'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'triton', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_load_on_first_use(tmp_path):
    code = "import kvtier; print(kvtier.DiskStore.__module__, kvtier.KVTierConfig.__name__, 'DiskStore' in dir(kvtier))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["kvtier.tiers.disk.store", "KVTierConfig", "True"]
