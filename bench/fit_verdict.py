"""Fit the verdict's calibrated model on real SAEs and test it on a held-out real model.

    python bench/fit_verdict.py [--write]

Fit set: the MiniLM-L6 fixture (saematch.realmodels; BERT, 5 pairs) and the demo's planted
synthetic pairs; held out: the SmolLM2-135M fixture (Llama, 5 pairs). Prints per held-out pair
the reliability bins, ECE, and precision / kept share of `persists`, `top1_persists` and the
plain rule, before (the old (1 − lfdr)·a) and after; with --write, saves the model to
src/saematch/verdict_model.json with that provenance. tests/test_realmodels.py rebuilds the same
fixtures (FIXTURES) and checks the shipped model against the issue's targets.
"""

import argparse
import json
import pickle
import platform
import sys
import time
from pathlib import Path

from saematch import calibrate, realmodels
from saematch.realmodels import FIXTURES


def line(r):
    p, p1, pl_, pb = r["persists"], r["top1_persists"], r["plain_rule"], r["persists_before"]
    return (f"| {r['layer']}→{r['layer'] + 1} | {r['features']} | {r['forced_precision']:.3f} | "
            f"{r['ece_before']:.3f} → {r['ece']:.3f} | {r['top1_ece_before']:.3f} → {r['top1_ece']:.3f} | "
            f"{pb['precision']:.3f} / {pb['kept']:.3f} → {p['precision']:.3f} / {p['kept']:.3f} | "
            f"{p1['precision']:.3f} / {p1['kept']:.3f} | {pl_['precision']:.3f} / {pl_['kept']:.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--tables", help="a .pkl of the labelled tables: read if it exists, else written")
    args = ap.parse_args()
    t0 = time.time()
    if args.tables and Path(args.tables).exists():
        tables = pickle.loads(Path(args.tables).read_bytes())
    else:
        fixtures = {name: realmodels.build(name, **spec) for name, spec in FIXTURES.items()}
        tables = {"minilm-l6": realmodels.labelled(fixtures["minilm-l6"]), "planted": realmodels.planted_labelled(),
                  "smollm2-135m": realmodels.labelled(fixtures["smollm2-135m"]),
                  "tokens": {n: fx["tokens"] for n, fx in fixtures.items()}}
        if args.tables:
            Path(args.tables).write_bytes(pickle.dumps(tables))
    model = realmodels.fit_verdict_model([tables["minilm-l6"], tables["planted"]])
    held = tables["smollm2-135m"]
    report = realmodels.pair_report(held, model)
    print("| pair | features | forced precision | ECE before → after | top-1 ECE before → after | persists "
          "precision / kept before → after | top1_persists | plain rule |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report:
        print(line(r))
    for r in report:
        for key, what in (("bins_before", "before"), ("bins", "confidence"), ("top1_bins", "top1_confidence")):
            print(f"pair {r['layer']}: {what} bins (mean confidence → share with the activation partner):",
                  "; ".join(f"{b['bin']}: {b['features']} at {b['mean_confidence']:.2f} → {b['share_partner']:.2f}"
                            for b in r[key]))
    print(f"{time.time() - t0:.0f} s on {platform.machine()} ({platform.processor() or 'cpu'})", file=sys.stderr)
    if args.write:
        model["provenance"] = {
            "fit": ["minilm-l6 (5 pairs, activation truth)", "planted synthetic pairs (saematch.demo.planted_pair)"],
            "held_out": "smollm2-135m", "fixtures": {n: {**s, "about": realmodels.MODELS[n]["about"],
                                                          "tokens": tables["tokens"][n]} for n, s in FIXTURES.items()},
            "held_out_report": [{k: v for k, v in r.items() if "bins" not in k} for r in report],
            "script": "bench/fit_verdict.py --write"}
        calibrate.MODEL_PATH.write_text(json.dumps(model, indent=1) + "\n")
        print(f"wrote {calibrate.MODEL_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
