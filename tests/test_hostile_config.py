"""Hostile configs and flags: anchor bombs, huge integers, huge files, typos. Parsing is bounded in time and memory,
every failure is one line that names the file or the flag, and it comes before any window is read."""

from __future__ import annotations

import time

import pytest

from fpn_geo.config import SegmentConfig, load_config
from fpn_geo.errors import ConfigError
from tests.hostile import assert_one_line_failure, digest, run_inprocess, temps

BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["window: *l9"]
)
WIDE_BOMB = "\n".join(["a: &a [x]"] + [f"k{i}: *a" for i in range(500)])

YAML_CASES = [
    ("anchor-bomb", BOMB, "anchor bomb"),
    ("many-aliases", WIDE_BOMB, "aliases"),
    ("5000-digit-integer", "window: " + "9" * 5000, "digits"),
    ("huge-file", "# " + "x" * (2 * 1024 * 1024), "bytes"),
    ("deep-nesting", "window: " + "[" * 200 + "]" * 200, "nested"),
    ("not-a-mapping", "- window\n- 512\n", "mapping"),
    ("syntax-error", "window: [512\n", "cannot read"),
    ("tab-indent", "window:\n\t512\n", "cannot read"),
    ("unknown-key", "windw: 512\n", "unknown key 'windw'"),
    ("wrong-type", "window: big\n", "window"),
    ("simplify-inf", "simplify_m: .inf\n", "simplify_m"),
    ("threshold-nan", "threshold: .nan\n", "threshold"),
    ("device-unknown", "device: tpu\n", "device"),
    ("python-tag", "window: !!python/object/apply:os.system ['echo pwned']\n", "cannot read"),
    ("binary", "\x00\x01\x02", "cannot read"),
]


@pytest.mark.parametrize("text,word", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_hostile_yaml_is_one_line_and_bounded(tmp_path, checkpoint, small_scene, capsys, text, word):
    cfg = tmp_path / "hostile.yaml"
    cfg.write_text(text)
    out_dir = tmp_path / "out"
    before = digest([small_scene, cfg])
    t0 = time.monotonic()
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(out_dir / "b.gpkg"),
         "--config", str(cfg), "-q"], capsys
    )
    assert time.monotonic() - t0 < 10
    assert_one_line_failure(code, err, word, str(cfg))
    assert digest([small_scene, cfg]) == before
    assert not out_dir.exists() or temps(out_dir) == []


FLAG_CASES = [
    (["--device", "tpu"], "--device tpu", "unknown device"),
    (["--device", "cuda:x"], "--device cuda:x", "unknown device"),
    (["--window", "500"], "--window 500", "multiple of 32"),
    (["--window", "1000000"], "--window 1000000", "less than or equal"),
    (["--overlap", "300"], "--overlap 300", "less than half"),
    (["--simplify", "inf"], "--simplify inf", "finite"),
    (["--simplify", "nan"], "--simplify nan", "finite"),
    (["--threshold", "1.5"], "--threshold 1.5", "less than 1"),
    (["--min-area", "-1"], "--min-area -1", "greater than or equal"),
    (["--batch", "0"], "--batch 0", "greater than 0"),
]


@pytest.mark.parametrize("flags,named,word", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_names_the_flag_not_the_config_file(tmp_path, checkpoint, small_scene, capsys, flags, named, word):
    cfg = tmp_path / "good.yaml"
    cfg.write_text("threshold: 0.5\n")
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"),
         "--config", str(cfg), "-q", *flags],
        capsys,
    )
    assert_one_line_failure(code, err, named, word)
    assert str(cfg) not in err[0]


def test_window_larger_than_the_scene_is_clamped(tmp_path, checkpoint, small_scene, capsys):
    """A 4096 window on a 300x200 scene: one window of the scene's size, not a 4096² padded one."""
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"), "--window", "4096",
         "--overlap", "64", "-q"], capsys,
    )
    assert code == 0, err
    import pyogrio

    prov = pyogrio.read_dataframe(tmp_path / "b.gpkg", layer="provenance").iloc[0]
    assert '"window": 320' in prov["parameters"] or '"window": 352' in prov["parameters"], prov["parameters"]


def test_defaults_are_the_pydantic_fields_and_the_yaml_only_overrides(tmp_path):
    from pathlib import Path

    import yaml

    shipped = Path(__file__).resolve().parent.parent / "configs" / "segment.yaml"
    assert (yaml.safe_load(shipped.read_text()) or {}) == {}, "configs/segment.yaml holds overrides only"
    assert load_config() == SegmentConfig()
    assert load_config(shipped) == SegmentConfig()
    assert not hasattr(__import__("fpn_geo.config").config, "DEFAULT_CONFIG")


def test_scratch_dir_resolves_against_the_config_files_folder(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "run.yaml").write_text("scratch_dir: scratch\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg_dir / "run.yaml").scratch_dir == str(cfg_dir / "scratch")


def test_negative_values_are_named_for_what_they_are():
    with pytest.raises(ConfigError, match="min_area_m2"):
        load_config(min_area_m2=-4)


def test_a_device_this_host_does_not_have_is_one_line(tmp_path, checkpoint, small_scene, capsys):
    """`mps` passes the config's pattern (it is a device on a Mac); where torch has none, one line before the
    model moves there, not torch's traceback from inside Module.to."""
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this host has MPS")
    out = tmp_path / "new" / "b.gpkg"
    code, err = run_inprocess(
        ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(out), "--device", "mps", "-q"], capsys
    )
    assert_one_line_failure(code, err, "mps", "--device cpu")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("pair,word", [("window", "KEY=VALUE"), ("=512", "KEY=VALUE"), ("window=[1", "window=[1")])
def test_flow_set_pairs_that_are_not_key_yaml_are_one_line(capsys, pair, word):
    """`python -m flows.segment --set ...`: refused before any server or cluster starts."""
    from flows.segment import main

    code = main(["--set", pair, "scene", "s.tif", "--out", "o.gpkg"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and word in err[0] and "--set" in err[0], err


def test_set_pairs_parse_as_yaml_values():
    from fpn_geo.config import parse_overrides

    assert parse_overrides(["batch=8", "radiometry={rule: percentile}", "scratch_dir="]) == {
        "batch": 8, "radiometry": {"rule": "percentile"}, "scratch_dir": None,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["window"])
