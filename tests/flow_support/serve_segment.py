"""Serve the segment-scene flow as a deployment named `test`, for tests/test_flows.py (run as a subprocess)."""

from flows.segment import segment_scene

if __name__ == "__main__":
    segment_scene.serve(name="test", print_starting_message=True, limit=2)
