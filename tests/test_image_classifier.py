"""The classifier over image patches: patches, bidirectional layers, positions, save/load."""

import pytest
import torch

from tokendyn.errors import ConfigError, DataError
from tokendyn.model import ClassifierConfig, MambaClassifier, load_model
from tokendyn.model.classifier import patchify


def image_config(**kw):
    base = dict(input_dim=2 * 16, n_classes=4, d_model=16, n_layer=2, d_state=4, patch_size=4,
                scan_backend="reference")
    base.update(kw)
    return ClassifierConfig(**base)


def test_patchify_matches_a_loop():
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    got = patchify(x, 4)
    assert got.shape == (2, 6, 48)
    t = 0
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(got[:, t], x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(2, -1))
            t += 1
    assert patchify(torch.zeros(1, 1, 28, 28), 4).shape == (1, 49, 16)


def test_image_input_equals_the_patch_sequence():
    torch.manual_seed(0)
    img = MambaClassifier(image_config()).double().eval()
    seq = MambaClassifier(image_config(patch_size=0)).double().eval()
    seq.load_state_dict(img.state_dict())
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(img(x), seq(patchify(x, 4)), rtol=0, atol=0)


def test_bidirectional_layers_scan_in_reverse():
    torch.manual_seed(1)
    model = MambaClassifier(image_config(patch_size=0, input_dim=5, bidirectional=True, n_layer=3)).double()
    assert [layer.reverse for layer in model.backbone.layers] == [False, True, False]
    block = model.backbone.layers[1]
    h = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        out, _, _ = block(h)
        block.reverse = False
        ref, _, _ = block(h.flip(1))
        block.reverse = True
    torch.testing.assert_close(out, ref.flip(1))
    # the first token's final state now depends on later tokens (a causal stack would not)
    x = torch.randn(1, 7, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        a = model(x, output_internals=True).hidden_states[-1][:, 0]
        b = model(x2, output_internals=True).hidden_states[-1][:, 0]
    assert not torch.allclose(a, b)


def test_positions_and_save_load(tmp_path):
    torch.manual_seed(2)
    cfg = image_config(n_positions=4, bidirectional=True, pooling="last")
    model = MambaClassifier(cfg).eval()
    assert model.backbone.embedding.position.shape == (4, 16)
    x = torch.randn(2, 2, 8, 8)
    model.save(tmp_path / "clf")
    again = load_model(tmp_path / "clf")

    def strip(c):
        return {k: v for k, v in c.to_dict().items() if k != "scan_backend"}

    assert strip(again.config) == strip(cfg)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(DataError, match="position embedding covers 4"):
        model(torch.randn(1, 2, 12, 12))


def test_bad_image_input_and_config():
    model = MambaClassifier(image_config())
    with pytest.raises(DataError, match="multiples of the patch size 4"):
        model(torch.randn(1, 2, 9, 8))
    with pytest.raises(DataError, match=r"\(batch, 2, H, W\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="multiple of 16"):
        image_config(input_dim=20)
    with pytest.raises(ConfigError, match="patch_size"):
        image_config(patch_size=-1)
    with pytest.raises(ConfigError, match="bidirectional"):
        image_config(bidirectional="yes")
