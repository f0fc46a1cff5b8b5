"""Builds the disk tier's compiled file I/O where a C compiler is present (optional:
without one, kvtier installs and uses the Python twin; see kvtier/tiers/disk/fileio.py), with
xxHash's own header (third_party/xxhash, BSD-2-Clause) for the checksums its batch reads take."""
from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["kvtier", "kvtier.*"]),
    ext_modules=[Extension("kvtier.tiers.disk._fileio", ["kvtier/tiers/disk/_fileio.c"], optional=True,
                           include_dirs=["third_party"], depends=["third_party/xxhash/xxhash.h"],
                           extra_compile_args=["-O2", "-Wall", "-Wextra"])],
)
