"""mypy holds on the whole package, --strict on block/, tiers/ and transfer/ (pyproject.toml; mypy is a dev extra)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_type_checks():
    result = subprocess.run([sys.executable, "-m", "mypy", "kvtier"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
