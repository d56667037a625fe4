"""Serve the segment-scenes flow as a deployment named `test`, for tests/test_flows_stac.py (run as a subprocess)."""

from flows.segment import segment_scenes

if __name__ == "__main__":
    segment_scenes.serve(name="test", print_starting_message=True, limit=1)
