"""The model's Linear: its packed copy of the weight follows the weight (loaded into, cast, replaced, copied)."""
from __future__ import annotations

import copy

import torch

from kvtier.model.layers import Linear


def _check(layer: Linear, x: torch.Tensor) -> None:
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-5)


def test_the_packed_weight_follows_loads_casts_and_replacements():
    torch.manual_seed(0)
    layer, x = Linear(16, 8, bias=True), torch.randn(3, 16)
    _check(layer, x)
    layer.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.randn(8)})  # in place: a new version
    _check(layer, x)
    with torch.no_grad():
        layer.weight.mul_(2)
    _check(layer, x)
    layer.weight = torch.nn.Parameter(torch.randn(8, 16))  # a new tensor
    _check(layer, x)
    layer.to(torch.bfloat16)
    _check(layer, x.bfloat16())


def test_a_deep_copy_packs_its_own_weight():
    layer, x = Linear(16, 8), torch.randn(3, 16)
    _check(layer, x)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.add_(1)
    _check(twin, x)
    _check(layer, x)
