"""Maps the top-level kernels/ folder to the subpackage kvtier.kernels (never a top-level `kernels`)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["kvtier", "kvtier.*"]) + ["kvtier.kernels"],
    package_dir={"kvtier.kernels": "kernels"},
)
