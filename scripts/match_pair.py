"""Match the features of layer L to layer L+1 for one model, variant and site; write Parquet.

A pair already computed by another variant from the same SAE files, options and algorithm
version is copied instead (its provenance says `reused_from`).
"""

import json
import logging
import time
from glob import glob
from pathlib import Path

from saematch import ALGO_VERSION, logs
from saematch.write import reuse_identical

with logs.job(snakemake):
    t0 = time.perf_counter()
    wc = snakemake.wildcards
    layer = int(wc.layer)
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    pointers = {side: read(snakemake.input[side]) for side in ("src", "dst")}
    provenance = {
        "model": wc.model,
        "variant": wc.variant,
        "site": wc.site,
        "layer": layer,
        "src": pointers["src"],
        "dst": pointers["dst"],
        "options": snakemake.params.options,
        "algo_version": ALGO_VERSION,
    }
    if "model" in snakemake.input.keys():
        provenance["model_files"] = read(snakemake.input.model)
    others = glob(f"results/model={wc.model}/variant=*/matches/site={wc.site}/layer={layer}/part-0.parquet")
    reused = reuse_identical(snakemake.output[0], others, provenance)
    if reused:
        logging.info("same SAE files, options and algorithm as %s: copied", reused)
    else:
        import torch

        from saematch.config import site_options
        from saematch.devices import gpu_sections, host_has_gpu, match_device_key
        from saematch.load import load_pair
        from saematch.match import match_pair
        from saematch.write import write_matches

        torch.set_num_threads(snakemake.threads)
        src, dst = load_pair(pointers["src"], pointers["dst"], layer, provenance.get("model_files"),
                             where=(str(snakemake.input.src), str(snakemake.input.dst)))
        load_seconds = time.perf_counter() - t0

        device = site_options(snakemake.config, wc.model, wc.site)["device"]  # a resource, not a param
        # a cluster job was given its GPU (resource gpu); a local one shares this host's GPUs with the
        # other jobs, holding memory on one only around its GPU stages (saematch.devices.gpu_sections)
        use_gpu = snakemake.resources.gpu > 0 or (device != "cpu" and host_has_gpu())
        gpu = gpu_sections(use_gpu, device, match_device_key(snakemake.config, wc.site))
        columns, stats = match_pair(src, dst, gpu=gpu, **snakemake.params.options)
        stats["seconds"] = {"load": round(load_seconds, 4), **stats["seconds"]}
        stats["seconds"]["total"] = round(time.perf_counter() - t0, 4)
        provenance.update(versions=logs.versions(), peak_rss_bytes=logs.peak_rss_bytes(), **stats)
        write_matches(snakemake.output[0], columns, provenance)
