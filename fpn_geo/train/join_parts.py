"""Join checkpoint parts written by the GPU trainer (``fpn_geo.train.gpu``) and check every sha256.

Checks each part against SHA256SUMS, joins NAME.safetensors.partNN in order, checks the joined file
against the sha256 in train_gpu.json (which is also the metadata's weights_sha256), writes NAME.json
beside it, and loads it once with ``load_checkpoint``. Exit 1 on any mismatch; nothing is left half-written.

    python -m fpn_geo.train.join_parts --from /work/.device/.../out --out models/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fpn_geo.hashing import sha256_file  # stdlib only: no torch


def join(src: Path, out: Path) -> list[Path]:
    """The checkpoints of the run in `src`, joined into `out` once every part's and every whole's sha256 matches."""
    sums = {}
    for line in (src / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.strip()] = digest
    for name, digest in sums.items():
        got = sha256_file(src / name)
        if got != digest:
            raise SystemExit(f"join: {name}: sha256 {got[:12]}… but SHA256SUMS says {digest[:12]}…; fetch it again")
    report = json.loads((src / "train_gpu.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, m in report["models"].items():
        target = out / f"{name}.safetensors"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            for part in m["parts"]:
                f.write((src / part).read_bytes())
        got = sha256_file(tmp)
        if got != m["sha256"] or got != m["meta"]["weights_sha256"]:
            tmp.unlink()
            raise SystemExit(f"join: {name}: joined sha256 {got[:12]}… but the run recorded {m['sha256'][:12]}…")
        os.replace(tmp, target)
        target.with_suffix(".json").write_text(json.dumps(m["meta"], indent=2))
        (out / f"{name}.metrics.json").write_text(json.dumps(m["metrics"], indent=1))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m fpn_geo.train.join_parts`: join, check, and load each checkpoint once (unless --no-load)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="src", required=True, help="folder with the parts, SHA256SUMS and train_gpu.json")
    p.add_argument("--out", required=True, help="folder for NAME.safetensors + NAME.json")
    p.add_argument("--no-load", action="store_true", help="skip the load_checkpoint check (no torch)")
    a = p.parse_args(argv)
    written = join(Path(a.src), Path(a.out))
    for path in written:
        line = f"{path}  sha256 ok"
        if not a.no_load:
            from fpn_geo.model.checkpoint import load_checkpoint

            _, meta = load_checkpoint(path)
            t = meta.extra.get("training", {})
            line += (f", loads: {meta.architecture} gsd {meta.gsd_m} classes {list(meta.classes)}; "
                     f"{t.get('chips_per_s')} chips/s, {t.get('train_seconds')} s on {t.get('device')}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
