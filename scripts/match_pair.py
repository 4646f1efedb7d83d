"""Match the features of layer L to layer L+1 for one model, variant and site; write Parquet.

A `match_pair` job does one pair; a `match_site_*` job (SAEs narrower than config group_below)
does every pair of its site one after another in one process, writing the same files.
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
    wc, inputs = snakemake.wildcards, snakemake.input
    model = getattr(snakemake.params, "model", None) or wc.model
    variant = getattr(snakemake.params, "variant", None) or wc.variant
    if "saes" in inputs.keys():  # a site job: one pointer per layer, one output per pair
        pointer_of = dict(zip(snakemake.params.sae_layers, inputs.saes))
        pairs = [(L, pointer_of[L], pointer_of[L + 1], out) for L, out in zip(snakemake.params.layers,
                                                                              snakemake.output)]
    else:
        pairs = [(int(wc.layer), inputs.src, inputs.dst, snakemake.output[0])]
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    model_files = read(inputs.model) if "model" in inputs.keys() else None
    for layer, src_path, dst_path, output in pairs:
        t0 = time.perf_counter()
        provenance = {
            "model": model,
            "variant": variant,
            "site": wc.site,
            "layer": layer,
            "src": read(src_path),
            "dst": read(dst_path),
            "options": snakemake.params.options,
            "algo_version": ALGO_VERSION,
        }
        if model_files is not None:
            provenance["model_files"] = model_files
        others = glob(f"results/model={model}/variant=*/matches/site={wc.site}/layer={layer}/part-0.parquet")
        reused = reuse_identical(output, others, provenance)
        if reused:
            logging.info("layer %d: same SAE files, options and algorithm as %s: copied", layer, reused)
            continue
        import torch

        from saematch.config import site_options
        from saematch.devices import gpu_sections, host_has_gpu, match_device_key
        from saematch.load import load_pair
        from saematch.match import match_pair
        from saematch.write import write_matches

        torch.set_num_threads(snakemake.threads)
        src, dst = load_pair(provenance["src"], provenance["dst"], layer, model_files,
                             where=(str(src_path), str(dst_path)))
        load_seconds = time.perf_counter() - t0

        device = site_options(snakemake.config, model, wc.site)["device"]  # a resource, not a param
        # a cluster job was given its GPU (resource gpu); a local one shares this host's GPUs with the
        # other jobs, holding memory on one only around its GPU stages (saematch.devices.gpu_sections)
        use_gpu = snakemake.resources.gpu > 0 or (device != "cpu" and host_has_gpu())
        gpu = gpu_sections(use_gpu, device, match_device_key(snakemake.config, wc.site))
        columns, stats = match_pair(src, dst, gpu=gpu, **snakemake.params.options)
        stats["seconds"] = {"load": round(load_seconds, 4), **stats["seconds"]}
        stats["seconds"]["total"] = round(time.perf_counter() - t0, 4)
        provenance.update(versions=logs.versions(), peak_rss_bytes=logs.peak_rss_bytes(), **stats)
        write_matches(output, columns, provenance)
        del src, dst, columns
