"""Check the matches of every selected site against the model's activations on the text sample,
in one pass; write Parquet: per site and pair the metrics (saematch.evaluate), per feature its
partners on data."""

import json
import logging
import time
from pathlib import Path

from saematch import ALGO_VERSION, logs

with logs.job(snakemake):
    t0 = time.perf_counter()
    import polars as pl
    import torch

    from saematch.config import ConfigError, data_label, evaluate_options, file_sha256
    from saematch.devices import job_device
    from saematch.evaluate import evaluate_sites, features_frame
    from saematch.hub import resolve, resolve_files
    from saematch.lm import check_hooks, load_lm, read_documents, token_batches
    from saematch.load import load_sae
    from saematch.sae import to_device
    from saematch.write import write_frame

    wc, opts = snakemake.wildcards, snakemake.params.options
    run = evaluate_options(snakemake.config, wc.model)  # batch size, device, memory: not results
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    torch.set_num_threads(snakemake.threads)
    pointers = {site: {L: read(p) for L, p in zip(opts["layers"], snakemake.input[f"saes_{site}"])}
                for site in opts["sites"]}
    matches = {site: {L: pl.read_parquet(p) for L, p in zip(opts["pairs"], snakemake.input[f"matches_{site}"])}
               for site in opts["sites"]}
    data = opts["data"]
    if data_label(snakemake.config, wc.model) != wc.data:  # the folder is named by the text's content
        raise ConfigError(f"{snakemake.input.data}: the text sample changed after this run started "
                          f"(its folder is {wc.data}); run again")
    if "path" in data:
        text, data_sha256 = snakemake.input.data, file_sha256(snakemake.input.data)  # hashed by data_label
    else:
        pointer = read(snakemake.input.data)
        text, data_sha256 = resolve(pointer, "data"), pointer["files"]["data"]["sha256"]
    docs = read_documents(text, data.get("column", "text"))
    model_files = read(snakemake.input.model)
    with job_device(snakemake.resources.gpu > 0, run["device"], "evaluate.device") as dev:
        model, tokenizer = load_lm(resolve_files(model_files), dev, opts["dtype"])
        sites = {site: ({L: to_device(load_sae(p), dev) for L, p in pointers[site].items()},
                        {L: {"match": m["match"].fill_null(-1).to_numpy(), "top1": m["top1"].to_numpy()}
                         for L, m in matches[site].items()})
                 for site in opts["sites"]}
        ids, mask, valid = next(token_batches(docs, tokenizer, opts["n_tokens"], opts["context"], run["batch_size"]))
        hook_errors = check_hooks(model, opts["format"], ids.to(dev), mask.to(dev), valid.to(dev))
        logging.info("hooks match the model's hidden states: largest relative errors %s", hook_errors)
        if str(dev).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)
        t1 = time.perf_counter()
        rows, features = evaluate_sites(
            model, opts["format"],
            lambda: token_batches(docs, tokenizer, opts["n_tokens"], opts["context"], run["batch_size"]),
            sites, loss_tokens=opts["loss_tokens"], top_k=opts["top_k"], device=dev, total_tokens=opts["n_tokens"],
            dense_max_gb=run["dense_max_gb"])
        seconds = time.perf_counter() - t1
        peak = torch.cuda.max_memory_allocated(dev) if str(dev).startswith("cuda") else None
    tokens = rows[0]["tokens"] if rows else 0
    logging.info("%d tokens in %.1f s: %.0f tokens/s%s", tokens, seconds, tokens / max(seconds, 1e-9),
                 f", peak GPU memory {peak / 2**30:.2f} GiB" if peak else "")
    provenance = {"model": wc.model, "variant": wc.variant, "data": wc.data, "data_sha256": data_sha256,
                  "options": opts, "algo_version": ALGO_VERSION, "model_files": model_files,
                  "saes": {site: {str(L): p for L, p in ps.items()} for site, ps in pointers.items()},
                  "hook_errors": hook_errors,
                  "device": str(dev), "batch_size": run["batch_size"], "seconds": round(seconds, 3),
                  "tokens_per_second": round(tokens / max(seconds, 1e-9), 1), "peak_gpu_bytes": peak,
                  "versions": logs.versions(), "total_seconds": round(time.perf_counter() - t0, 3)}
    write_frame(snakemake.output.features,
                pl.concat([features_frame(site, L, features[(site, L)], matches[site][L])
                           for site in opts["sites"] for L in opts["pairs"]]), provenance)
    write_frame(snakemake.output.pairs, pl.DataFrame(rows), provenance)
