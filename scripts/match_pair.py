"""Match the features of layer L to layer L+1 for one model, variant and site; write Parquet."""

import json
import time
from pathlib import Path

from saematch import ALGO_VERSION, logs

with logs.job(snakemake):
    import torch

    from saematch.config import site_options
    from saematch.devices import job_device
    from saematch.hub import resolve_files
    from saematch.load import load_att_projection, load_sae, project_att
    from saematch.match import match_pair
    from saematch.write import write_matches

    torch.set_num_threads(snakemake.threads)
    t0 = time.perf_counter()
    wc = snakemake.wildcards
    layer = int(wc.layer)
    pointers = {side: json.loads(Path(snakemake.input[side]).read_text()) for side in ("src", "dst")}
    src, dst = (load_sae(pointers[side]) for side in ("src", "dst"))
    if "model" in snakemake.input.keys():
        model_files = resolve_files(json.loads(Path(snakemake.input.model).read_text()))
        src = project_att(src, *load_att_projection(model_files, layer), where=str(snakemake.input.src))
        dst = project_att(dst, *load_att_projection(model_files, layer + 1), where=str(snakemake.input.dst))
    load_seconds = time.perf_counter() - t0

    opts = snakemake.params.options
    device = site_options(snakemake.config, wc.model, wc.site)["device"]  # a resource, not a param
    with job_device(snakemake.resources.gpu > 0, device) as dev:
        columns, stats = match_pair(src, dst, device=dev, **opts)
    stats["seconds"] = {"load": round(load_seconds, 4), **stats["seconds"]}
    stats["seconds"]["total"] = round(time.perf_counter() - t0, 4)
    provenance = {
        "model": wc.model,
        "variant": wc.variant,
        "site": wc.site,
        "layer": layer,
        "src": pointers["src"],
        "dst": pointers["dst"],
        "options": opts,
        "algo_version": ALGO_VERSION,
        "versions": logs.versions(),
        "peak_rss_bytes": logs.peak_rss_bytes(),
        **stats,
    }
    write_matches(snakemake.output[0], columns, provenance)
