"""The segmenter and its checkpoint format: shapes, pyramid, metadata checks, safe loading, compiled padding."""

import json

import pytest
import torch

from fpn_geo.errors import CheckpointError, ModelInputError
from fpn_geo.model import BuildingSegmenter, ModelMeta, build_model, load_checkpoint, save_checkpoint
from fpn_geo.model.meta import meta_path
from tests.doubles import make_checkpoint


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_runs_on_any_band_count_and_keeps_input_size(bands):
    model = BuildingSegmenter(depth=18, in_channels=bands, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, bands, 64, 96))
    assert out.shape == (2, 3, 64, 96)


def test_pyramid_levels_have_geometric_names_and_strides():
    model = BuildingSegmenter(depth=18, in_channels=3)
    assert model.fpn.output_shape() == {f"p{i}": (256, 2**i) for i in (2, 3, 4, 5)}
    feats = model.fpn(torch.randn(1, 3, 128, 128))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"p2": 32, "p3": 16, "p4": 8, "p5": 4}


def test_old_metadata_with_p6_false_loads_and_p6_true_is_refused():
    d = ModelMeta(depth=18).to_dict()
    assert ModelMeta.from_dict({**d, "p6": False}) == ModelMeta(depth=18)
    with pytest.raises(CheckpointError, match="p6 = .True.*retrain without it"):
        ModelMeta.from_dict({**d, "p6": True})


def test_refuses_500x500_with_the_size_and_the_fix():
    model = BuildingSegmenter(depth=18, in_channels=3).eval()
    with pytest.raises(ModelInputError, match=r"height=500, width=500.*multiples of 32.*\(512, 512\)"):
        model(torch.zeros(1, 3, 500, 500))


def test_checkpoint_round_trip_is_exact(tmp_path):
    path = make_checkpoint(tmp_path / "m.safetensors", depth=18, bands=4)
    model, meta = load_checkpoint(path)
    assert meta.bands == (1, 2, 3, 4) and meta.architecture.startswith("resnet18")
    assert len(meta.weights_sha256) == 64
    again = build_model(meta)
    torch.manual_seed(0)
    ref = build_model(ModelMeta(depth=18, bands=(1, 2, 3, 4), mean=(100.0,) * 4, std=(50.0,) * 4))
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert again is not model


def test_checkpoint_with_other_architecture_is_refused(tmp_path):
    path = make_checkpoint(tmp_path / "m.safetensors", depth=18)
    record = json.loads(meta_path(path).read_text())
    record["depth"] = 34  # same file, metadata now claims a ResNet-34
    meta_path(path).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match architecture resnet34"):
        load_checkpoint(path)


def test_weights_that_do_not_belong_to_the_metadata_are_refused(tmp_path):
    a = make_checkpoint(tmp_path / "a.safetensors", seed=1)
    b = make_checkpoint(tmp_path / "b.safetensors", seed=2)
    meta_path(a).write_text(meta_path(b).read_text())
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_checkpoint(a)


def test_a_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, path)  # a zip/pickle file wearing the safetensors name
    save_meta = ModelMeta(depth=18)
    meta_path(path).write_text(json.dumps(save_meta.to_dict()))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_save_fills_the_weights_hash(tmp_path):
    meta = save_checkpoint(build_model(ModelMeta(depth=18)), ModelMeta(depth=18), tmp_path / "m.safetensors")
    assert json.loads(meta_path(tmp_path / "m.safetensors").read_text())["weights_sha256"] == meta.weights_sha256


def test_a_short_last_batch_is_padded_for_a_compiled_model_and_gives_the_same_numbers():
    """Padding (so torch.compile does not compile again) must not change a window's probabilities beyond the
    1/255 that any change of batch size gives (convolutions block their sums by batch)."""
    import numpy as np

    from fpn_geo.predictor import SegmenterPredictor

    torch.manual_seed(0)
    meta = ModelMeta(depth=18, fpn_channels=64, head_channels=32, bands=(1, 2, 3))
    predictor = SegmenterPredictor(build_model(meta), meta, "cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    alone = predictor(images[:1], [None]).numpy()  # probabilities on a 0-255 scale, floats
    predictor.compiled = True  # the padding path, without paying for a real compile on CPU
    predictor(images, [None] * 3)
    padded = predictor(images[:1], [None]).numpy()
    assert padded.shape == alone.shape == (1, 2, 64, 64)
    diff = np.abs(padded - alone)
    assert diff.max() <= 1 and (diff < 0.5).mean() > 0.99


def test_meta_channels_follow_the_separator_class_old_contact_name_included():
    from fpn_geo.model.meta import ModelMeta

    assert ModelMeta(classes=("background", "building", "separator")).contact_index == 2
    assert ModelMeta(classes=("background", "building", "contact")).channels == 2
    no_sep = ModelMeta(classes=("background", "building"))
    assert no_sep.contact_index is None and no_sep.channels == 1
