"""Hostile checkpoints: metadata of every wrong kind and weights with NaN or Inf. Each is refused on one line,
before any window is read, and nothing is written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fpn_geo.errors import CheckpointError
from fpn_geo.hashing import sha256_file
from fpn_geo.model.meta import ModelMeta, read_meta
from tests.doubles import make_checkpoint
from tests.hostile import assert_one_line_failure, digest, run_inprocess, temps


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("good") / "r18.safetensors")


def copy_checkpoint(src, dst_dir):
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def edited(good, tmp_path, change) -> Path:  # noqa: F821
    ckpt = copy_checkpoint(good, tmp_path / "ckpt")
    meta = ckpt.with_suffix(".json")
    text = meta.read_text()
    data = json.loads(text)
    new = change(data)
    if isinstance(new, bytes):
        meta.write_bytes(new)
    else:
        meta.write_text(new if isinstance(new, str) else json.dumps(new))
    return ckpt


def setkey(key, value):
    def change(d):
        d[key] = value
        return d

    return change


# (case id, how the metadata is changed, a word the one-line error must contain)
CASES = [
    ("gsd-zero", setkey("gsd_m", 0), "gsd_m"),
    ("gsd-negative", setkey("gsd_m", -0.3), "gsd_m"),
    ("gsd-string", setkey("gsd_m", "0.3"), "gsd_m"),
    ("gsd-absurdly-fine", setkey("gsd_m", 1e-300), "gsd_m"),  # a grid past any raster: sizes overflowed
    ("std-zero", setkey("std", [0, 50, 50]), "std"),
    ("std-negative", setkey("std", [-50, 50, 50]), "std"),
    ("mean-absurd", setkey("mean", [1e30, 100, 100]), "mean"),
    ("mean-nan", lambda d: json.dumps(d).replace('"mean": [100.0', '"mean": [NaN'), "mean"),
    ("mean-inf", lambda d: json.dumps(d).replace('"mean": [100.0', '"mean": [Infinity'), "mean"),
    ("mean-huge-literal", lambda d: json.dumps(d).replace('"mean": [100.0', '"mean": [1e999'), "mean"),
    ("huge-integer", lambda d: json.dumps(d).replace('"depth": 18', '"depth": ' + "9" * 5000), "cannot be read"),
    ("depth-unsupported", setkey("depth", 7), "depth"),
    ("depth-bool", setkey("depth", True), "depth"),
    (
        "bands-absurd",
        lambda d: {**d, "bands": list(range(1, 100001)), "mean": [1.0] * 100000, "std": [1.0] * 100000},
        "bands",
    ),
    ("bands-zero", setkey("bands", [0, 1, 2]), "bands"),
    ("bands-strings", setkey("bands", ["r", "g", "b"]), "bands"),
    ("bands-mismatch", setkey("mean", [100.0, 100.0]), "mean"),
    ("classes-unknown", setkey("classes", ["background", "roof"]), "classes"),
    ("classes-not-list", setkey("classes", "background,building"), "classes"),
    ("fpn-channels-absurd", setkey("fpn_channels", 10**9), "fpn_channels"),
    ("head-channels-negative", setkey("head_channels", -128), "head_channels"),
    ("p6-string", setkey("p6", "yes"), "p6"),
    ("input-range-reversed", setkey("input_range", [255, 0]), "input_range"),
    ("sha-not-hex", setkey("weights_sha256", "xyz"), "weights_sha256"),
    ("extra-not-object", setkey("extra", [1, 2]), "extra"),
    ("unknown-key", setkey("colour", "red"), "unknown metadata keys"),
    ("format-foreign", setkey("format", "someone-else/9"), "format"),
    ("json-list", lambda d: "[1, 2, 3]", "JSON object"),
    ("json-string", lambda d: '"hello"', "JSON object"),
    ("json-null", lambda d: "null", "JSON object"),
    ("json-deep", lambda d: "[" * 100000 + "]" * 100000, "cannot be read"),
    ("json-truncated", lambda d: json.dumps(d)[:50], "not valid JSON"),
    ("json-binary", lambda d: b"\xff\xfe\x00\x01 not text", "cannot be read"),
]


@pytest.mark.parametrize("change,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupt_metadata_is_one_line(good_checkpoint, small_scene, tmp_path, capsys, change, word):
    ckpt = edited(good_checkpoint, tmp_path, change)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "b.gpkg").write_bytes(b"an old output")
    before = digest([small_scene, ckpt, ckpt.with_suffix(".json"), out_dir])
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(ckpt), "--out", str(out_dir / "b.gpkg"), "-q"], capsys
    )
    assert_one_line_failure(code, err, word)
    assert digest([small_scene, ckpt, ckpt.with_suffix(".json"), out_dir]) == before
    assert temps(out_dir) == []


def test_info_on_corrupt_metadata_is_one_line(good_checkpoint, tmp_path, capsys):
    ckpt = edited(good_checkpoint, tmp_path, setkey("std", [0, 0, 0]))
    code, err = run_inprocess(["info", str(ckpt)], capsys)
    assert_one_line_failure(code, err, "std")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_even_with_a_matching_sha256(
    good_checkpoint, small_scene, tmp_path, capsys, bad
):
    ckpt = copy_checkpoint(good_checkpoint, tmp_path / "ckpt")
    state = load_file(str(ckpt))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    save_file(state, str(ckpt), metadata={"format": "fpn-geo-checkpoint/1"})
    meta = ckpt.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "weights_sha256": sha256_file(ckpt)}))  # sha256 matches
    out_dir = tmp_path / "out"
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(ckpt), "--out", str(out_dir / "b.gpkg"), "-q"], capsys
    )
    assert_one_line_failure(code, err, "NaN or infinite", name)
    assert not out_dir.exists() or temps(out_dir) == [] and not (out_dir / "b.gpkg").exists()


def test_separator_class_is_accepted_as_the_contact_class(tmp_path):
    meta = ModelMeta(depth=18, classes=("background", "building", "separator"))
    assert meta.contact_index == 2 and meta.channels == 2
    assert ModelMeta(depth=18, classes=("background", "building")).channels == 1


def test_old_checkpoints_without_input_range_default_to_8_bit(good_checkpoint, tmp_path):
    ckpt = edited(good_checkpoint, tmp_path, lambda d: {k: v for k, v in d.items() if k != "input_range"})
    assert read_meta(ckpt).input_range == (0.0, 255.0)


def test_save_refuses_non_finite_weights(tmp_path):
    from fpn_geo.model import build_model, save_checkpoint

    model = build_model(ModelMeta(depth=18))
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(model, ModelMeta(depth=18), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
