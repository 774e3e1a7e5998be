"""Separate a held-out mixture (a violin in the rain) and score it.

    python demo/example.py                      # the default model (querysep-mini offline)
    python demo/example.py --model BUNDLE       # any bundle, Hub id or registry name

The mixture comes from tests/data/mini: sources querysep-mini never heard in training, mixed
at 0 dB. Outputs land in ./separated/; the SDR improvement is measured against the true
violin. One mixture is an example, not a benchmark: bench/README.md has querysep-mini's
figures over 420 held-out mixtures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "mini"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="bundle directory, Hub id or registry name")
    parser.add_argument("--query", help="what to extract (default: the mixture's own caption)")
    parser.add_argument("-o", "--out", type=Path, default=Path("separated"))
    args = parser.parse_args()

    import querysep
    from querysep import audio, metrics

    items = json.loads((MINI / "items.json").read_text(encoding="utf-8"))
    item = next(i for i in items if i["name"] == "violin_rain")
    mixture, _ = audio.load(MINI / item["mixture"])
    reference, _ = audio.load(MINI / item["target"])
    query = args.query or item["query"]
    result = querysep.separate(MINI / item["mixture"], query, model=args.model)
    target, residual = result.save(args.out)
    gain = float(metrics.sdr_improvement(result.target, reference, mixture).mean())
    print(f"mixture:  {MINI / item['mixture']} ({item['description']})")
    print(f"query:    {query!r}\ntarget:   {target}\nresidual: {residual}")
    print(f"SDR improvement against the true source (plain SNR, as LASS reports it): {gain:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
