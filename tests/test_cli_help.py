"""`fpn-geo segment --help`: every flag says what it does, and each flag that sets a config key shows the default
that applies when neither a config file nor the flag sets it, read from SegmentConfig (the one home of defaults)."""

from __future__ import annotations

import pytest

from fpn_geo.cli import SEGMENT_FLAGS, build_parser
from fpn_geo.config import SegmentConfig
from fpn_geo.model.meta import POSTPROCESS_KEYS


@pytest.fixture(scope="module")
def segment_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["segment"]


def test_every_segment_flag_has_help(segment_parser):
    assert [a.option_strings for a in segment_parser._actions if a.option_strings and not a.help] == []
    text = segment_parser.format_help()  # argparse %-formats each help: a stray % would raise here
    assert "SegmentConfig" in text


@pytest.mark.parametrize(
    "key", ["window", "overlap", "batch", "device", "threshold", "min_area_m2", "simplify_m", "compile"]
)
def test_flags_show_the_documented_default(segment_parser, key):
    action = next(a for a in segment_parser._actions if SEGMENT_FLAGS[key] in a.option_strings)
    default = SegmentConfig.model_fields[key].default
    shown = ("on" if default else "off") if isinstance(default, bool) else str(default)
    own = ", or the checkpoint's own" if key in POSTPROCESS_KEYS else ""  # a model's post-processing defaults
    assert action.help.endswith(f"(default: {shown}{own})"), action.help
    assert action.default in (None, False)  # unset: a --config file can still set the key
