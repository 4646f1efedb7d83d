"""Feature Flow's predecessor scores and cases for the residual features of one layer; write Parquet.

A `flow` job does one layer; a small model's `flow_layers_*` job (group_below) does all its layers one
after another in one process, writing the same files.
A layer already computed by another variant from the same SAE files, options and algorithm
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
    params = snakemake.params
    if hasattr(params, "layers"):  # a small model's job: every layer, one output each
        model, variant, jobs = params.model, params.variant, params.layers
    else:
        wc = snakemake.wildcards
        model, variant = wc.model, wc.variant
        inputs = {k: snakemake.input[k] for k in snakemake.input.keys()}
        jobs = [{"layer": int(wc.layer), "modules": wc.modules, "inputs": inputs, "options": params.options,
                 "neuronpedia": params.neuronpedia}]
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    for job, output in zip(jobs, snakemake.output):
        t0 = time.perf_counter()
        layer, opts, inputs = job["layer"], job["options"], job["inputs"]
        names = [m for m in ("target", "res", "mlp", "att") if m in inputs]
        provenance = {"model": model, "variant": variant, "layer": layer,
                      **{m: read(inputs[m]) for m in names},
                      "options": opts, "algo_version": ALGO_VERSION,
                      "neuronpedia": job["neuronpedia"]}
        if "model" in inputs:
            provenance["model_files"] = read(inputs["model"])
        others = glob(f"results/model={model}/variant=*/flow/{job['modules']}/layer={layer}.parquet")
        reused = reuse_identical(output, others, provenance)
        if reused:
            logging.info("layer %d: same SAE files, options and algorithm as %s: copied", layer, reused)
            continue
        import torch

        from saematch.devices import job_device
        from saematch.flow import flow_layer
        from saematch.hub import resolve_files
        from saematch.load import load_att_projection, load_sae, project_att
        from saematch.write import write_flow

        torch.set_num_threads(snakemake.threads)
        saes = {m: load_sae(provenance[m]) for m in names}
        if "att" in saes and "model_files" in provenance:
            files = resolve_files(provenance["model_files"])
            saes["att"] = project_att(saes["att"], *load_att_projection(files, layer), where=str(inputs["att"]))
        device = snakemake.config["match"]["device"]  # a resource, not a param: moving to a GPU reruns nothing
        with job_device(snakemake.resources.gpu > 0, device) as dev:
            columns, stats = flow_layer(saes["target"].W_dec.to(dev),
                                        {m: saes[m].W_dec.to(dev) for m in saes if m != "target"},
                                        k=opts["top_k"], high=opts["high"],
                                        encoders={m: saes[m].W_enc for m in ("target", "res") if m in saes})
        provenance.update(versions=logs.versions(), seconds=round(time.perf_counter() - t0, 4), **stats)
        write_flow(output, columns, opts["top_k"], provenance)
