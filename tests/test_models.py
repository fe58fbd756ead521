"""Model architectures: the paper's layer lists, any cubic box, exposed features."""

from __future__ import annotations

import pytest
import torch

from tomosift.classify.models import (
    ARCHITECTURES,
    DSRF3D,
    Inception3D,
    build_model,
    count_parameters,
)
from tomosift.errors import TomosiftError


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("box", [16, 24, 32, 40])
def test_output_and_feature_shapes_for_any_box(architecture, box):
    model = build_model(architecture, 7, box).eval()
    volumes = torch.randn(3, 1, box, box, box)
    with torch.no_grad():
        scores = model(volumes)
        hidden = model.hidden_features(volumes)
        assert scores.shape == (3, 7)
        assert hidden.shape[0] == 3 and hidden.ndim == 2
        # the linear scores are the last layer applied to the hidden features (no softmax)
        torch.testing.assert_close(model.classifier(hidden), scores)


def test_inception3d_matches_the_papers_layer_list():
    model = Inception3D(23, 40)
    # conv 5³ valid: 40 -> 36, max pool /2 -> 18, inception keeps 18 with 160 channels,
    # average pool 2³ stride 1 -> 17: 160 * 17³ inputs to the output layer
    assert model.classifier.in_features == 160 * 17**3
    branches = [model.branch_1, model.branch_3, model.branch_5, model.branch_pool]
    x = torch.zeros(1, 32, 18, 18, 18)
    assert [b(x).shape[1] for b in branches] == [32, 64, 32, 32]
    assert all(b(x).shape[2:] == (18, 18, 18) for b in branches)  # 'same' everywhere
    assert model.dropout.p == pytest.approx(0.3)  # the paper's text: 70% retained
    assert Inception3D(23, 40, dropout=0.7).dropout.p == pytest.approx(0.7)  # the Keras code


def test_dsrf3d_matches_the_papers_layer_list():
    model = DSRF3D(23, 40)
    convolutions = [m for m in model.convolutions.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convolutions] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3, 3) for c in convolutions)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64 * 10**3, 512), (512, 512), (512, 23)]


def test_parameter_counts_and_bad_arguments():
    # 127 120 convolution weights and biases + (160 * 17³ + 1) * 23 in the output layer
    assert count_parameters(build_model("inception3d", 23)) == 127_120 + (160 * 17**3 + 1) * 23
    assert count_parameters(build_model("resnet3d", 23)) < count_parameters(
        build_model("inception3d", 23)) / 5
    with pytest.raises(TomosiftError, match="unknown model"):
        build_model("alexnet", 3)
    with pytest.raises(TomosiftError, match="at least 2 classes"):
        build_model("dsrf3d", 1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_embedding_head_gives_unit_vectors_and_leaves_the_rest_alone(architecture):
    torch.manual_seed(0)
    plain = build_model(architecture, 3, 16).eval()
    torch.manual_seed(0)
    model = build_model(architecture, 3, 16, embedding_dim=5).eval()
    volumes = torch.randn(4, 1, 16, 16, 16)
    with torch.no_grad():
        embedding = model.embedding(volumes)
        torch.testing.assert_close(model(volumes), plain(volumes), rtol=0, atol=0)
    assert embedding.shape == (4, 5)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4))
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra == {"embedding_head.weight", "embedding_head.bias"}
    with pytest.raises(TomosiftError, match="no embedding head"):
        plain.embedding(volumes)
