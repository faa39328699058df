"""Every registered mixer family, and every registered variant of Mamba-1, satisfies the mixer
contract (tokendyn.model.contract): isinstance of the runtime-checkable Protocol, and behaviour
(step equals forward token by token, allocate_state shapes, io_parameters keys and shapes, ...)."""

from __future__ import annotations

import pytest
import torch
from mixer_contract import check_mixer_contract

from tokendyn.model import ClassifierConfig, MambaConfig, MambaMixer, build_mixer
from tokendyn.model.families import family_names, get_family, variant_names

D_MODEL = 32     # Mamba-2's default head_dim 64 needs d_inner = 2 x 32 to hold a head


@pytest.mark.parametrize("layer", family_names())
def test_every_family_with_its_default_settings(layer):
    causal = get_family(layer).causal
    config = (MambaConfig(d_model=D_MODEL, n_layer=2, vocab_size=10, layer=layer) if causal else
              ClassifierConfig(input_dim=2, n_classes=2, d_model=D_MODEL, n_layer=2, layer=layer))
    torch.manual_seed(0)
    mixer = build_mixer(config, 1)
    assert type(mixer) is get_family(layer).mixer_cls and mixer.layer_idx == 1
    check_mixer_contract(mixer, D_MODEL, steps=causal)     # a non-causal mixer has no one-token step


# one config per variant of Mamba-1 that turns it on (and one with two at once); reordering has no step
VARIANT_CASES = {
    "io_constraint": (dict(io_constraint="positive", d_state=3), True),
    "reorder": (dict(reorder="soft", reorder_layers=[1], d_state=3), False),
}


def test_the_reorder_variant_of_mambavision():
    config = ClassifierConfig(input_dim=2, n_classes=2, d_model=D_MODEL, n_layer=2, layer="mambavision", d_state=3,
                              reorder="hard", reorder_branches="x", reorder_restore=False, reorder_layers=[1])
    torch.manual_seed(0)
    mixer = build_mixer(config, 1)
    assert type(mixer) is not get_family("mambavision").mixer_cls
    check_mixer_contract(mixer, D_MODEL, steps=False)


@pytest.mark.parametrize("variant", sorted(VARIANT_CASES))
def test_every_variant_of_mamba1(variant):
    options, steps = VARIANT_CASES[variant]
    config = ClassifierConfig(input_dim=2, n_classes=2, d_model=D_MODEL, n_layer=2, **options)
    torch.manual_seed(0)
    mixer = build_mixer(config, 1)
    assert variant in config.active_variants(1) and isinstance(mixer, MambaMixer) and type(mixer) is not MambaMixer
    check_mixer_contract(mixer, D_MODEL, steps=steps)


def test_every_registered_variant_has_a_case():
    assert set(variant_names()) <= set(VARIANT_CASES)


def test_variants_compose():
    config = ClassifierConfig(input_dim=2, n_classes=2, d_model=D_MODEL, n_layer=2, d_state=3,
                              io_constraint="mixed", reorder="hard", reorder_layers=[0])
    torch.manual_seed(0)
    check_mixer_contract(build_mixer(config, 0), D_MODEL, steps=False)
    check_mixer_contract(build_mixer(config, 1), D_MODEL)
