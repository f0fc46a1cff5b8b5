"""The rules every config field is checked against, and the dtype names configs accept.

Each check raises ValueError naming the owner, the field, the value and the rule.
"""
from __future__ import annotations

import torch

SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a supported dtype ('bfloat16'); raises ValueError for any other."""
    for name, candidate in SUPPORTED_DTYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {dtype!r}")


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name ('bf16' and 'fp16' are accepted too)."""
    if isinstance(value, torch.dtype):
        dtype_name(value)
        return value
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
    name = aliases.get(str(value), str(value))
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {value!r}")
    return SUPPORTED_DTYPES[name]


def check_positive_int(owner: str, name: str, value: object) -> None:
    """Raise ValueError unless value is an int >= 1 (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


def check_nonnegative_int(owner: str, name: str, value: object) -> None:
    """Raise ValueError unless value is an int >= 0 (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}.{name} must be an integer >= 0, got {value!r}")


def check_bool(owner: str, name: str, value: object) -> None:
    """Raise ValueError unless value is True or False (a string such as "no" is not)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be True or False, got {value!r}")


def check_mode(owner: str, name: str, value: object) -> None:
    """Raise ValueError unless value is permission bits (0 to 0o777) that leave the owner read and write."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777 or value & 0o600 != 0o600:
        raise ValueError(f"{owner}.{name} must be permission bits from 0o600 to 0o777 with owner read and write, "
                         f"got {value!r}")
