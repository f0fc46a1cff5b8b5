"""drop_cached flushes and drops the files that exist and skips the ones that do not."""
from __future__ import annotations

from pathlib import Path

from kvtier.bench.page_cache import drop_cached


def test_drop_cached_counts_the_files_it_flushed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 4096)
    assert drop_cached([str(tmp_path / "a"), str(tmp_path / "gone")]) == 1
