"""Feature Flow's predecessor scores and cases for the residual features of one layer; write Parquet."""

import json
import time
from pathlib import Path

from saematch import ALGO_VERSION, logs

with logs.job(snakemake):
    import torch

    from saematch.devices import job_device
    from saematch.flow import flow_layer
    from saematch.hub import resolve_files
    from saematch.load import load_att_projection, load_sae, project_att
    from saematch.write import write_flow

    t0 = time.perf_counter()
    torch.set_num_threads(snakemake.threads)
    wc, opts = snakemake.wildcards, snakemake.params.options
    layer = int(wc.layer)
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    names = [m for m in ("target", "res", "mlp", "att") if m in snakemake.input.keys()]
    pointers = {m: read(snakemake.input[m]) for m in names}
    saes = {m: load_sae(p) for m, p in pointers.items()}
    if "att" in saes and "model" in snakemake.input.keys():
        files = resolve_files(read(snakemake.input.model))
        saes["att"] = project_att(saes["att"], *load_att_projection(files, layer), where=str(snakemake.input.att))
    with job_device(snakemake.resources.gpu > 0, opts["device"]) as dev:
        columns, stats = flow_layer(saes["target"].W_dec.to(dev), {m: saes[m].W_dec.to(dev) for m in saes if m != "target"},
                                    k=opts["top_k"], high=opts["high"])
    provenance = {"model": wc.model, "variant": wc.variant, "layer": layer, "saes": pointers,
                  "options": {k: v for k, v in opts.items() if k != "device"}, "algo_version": ALGO_VERSION,
                  "neuronpedia": snakemake.params.neuronpedia, "versions": logs.versions(),
                  "seconds": round(time.perf_counter() - t0, 4), **stats}
    write_flow(snakemake.output[0], columns, opts["top_k"], provenance)
