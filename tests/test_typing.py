"""mypy --strict holds on block/, tiers/ and transfer/ (configured in pyproject.toml; mypy is a dev extra)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_strict_packages_type_check():
    result = subprocess.run([sys.executable, "-m", "mypy", "kvtier/block", "kvtier/tiers", "kvtier/transfer",
                             "kvtier/ops.py", "kvtier/cache.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
