"""Maps the top-level kernels/ folder to the subpackage kvtier.kernels (never a top-level `kernels`),
and builds the disk tier's compiled file I/O where a C compiler is present (optional:
without one, kvtier installs and uses the Python twin; see kvtier/tiers/disk/fileio.py)."""
from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["kvtier", "kvtier.*"]) + ["kvtier.kernels"],
    package_dir={"kvtier.kernels": "kernels"},
    ext_modules=[Extension("kvtier.tiers.disk._fileio", ["kvtier/tiers/disk/_fileio.c"], optional=True,
                           extra_compile_args=["-O2", "-Wall", "-Wextra"])],
)
