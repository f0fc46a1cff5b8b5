"""Builds kvtier's compiled routines where a C compiler is present: the disk tier's file I/O, the
remote tier's GET/SET and a raw payload's checksums (optional: without one, kvtier installs and uses
their Python twins; see kvtier/tiers/disk/fileio.py, kvtier/tiers/remote/wire.py and
kvtier/tiers/format/checksum.py), with xxHash's own header (third_party/xxhash, BSD-2-Clause)."""
from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["kvtier", "kvtier.*"]),
    ext_modules=[Extension("kvtier.tiers.disk._fileio", ["kvtier/tiers/disk/_fileio.c"], optional=True,
                           include_dirs=["third_party"], depends=["third_party/xxhash/xxhash.h"],
                           extra_compile_args=["-O2", "-Wall", "-Wextra"]),
                 # NOTE: -O3: xxh3 over 4 KiB segments took 22 us a 256 KiB payload at -O2, 16 at -O3 (gcc 12)
                 Extension("kvtier.tiers.format._checksums", ["kvtier/tiers/format/_checksums.c"], optional=True,
                           include_dirs=["third_party"], depends=["third_party/xxhash/xxhash.h"],
                           extra_compile_args=["-O3", "-Wall", "-Wextra"]),
                 Extension("kvtier.tiers.remote._resp", ["kvtier/tiers/remote/_resp.c"], optional=True,
                           include_dirs=["third_party"], depends=["third_party/xxhash/xxhash.h"],
                           extra_compile_args=["-O3", "-Wall", "-Wextra"])],
)
