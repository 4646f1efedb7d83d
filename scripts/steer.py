"""Steer one theme over its grid (saematch.steer.run_theme): its feature set from the run's
graph, every setting's generations and offline scores, the summary per setting and its figure."""

import json
import logging
from pathlib import Path

from saematch import logs

with logs.job(snakemake):
    import torch

    from saematch import ALGO_VERSION, figures, graph, steer
    from saematch.devices import job_device
    from saematch.hub import resolve, resolve_files
    from saematch.lm import load_lm, read_documents, token_batches
    from saematch.sae import to_device
    from saematch.write import write_frame

    opts, out, wc = snakemake.params.options, snakemake.output, snakemake.wildcards
    theme = opts["theme"]
    torch.set_num_threads(snakemake.threads)
    # the graph of exactly this run's selection (its declared inputs), not of older files beside them
    paths = graph.files_paths(Path(out.features).parents[3], snakemake.input.flow, snakemake.input.matches)
    seeds = steer.theme_seeds(paths, theme, "resources/neuronpedia")
    features = steer.feature_set(paths, seeds, opts["mode"], opts["cut"])
    G = graph.trace_set(paths, seeds, "both", mode=opts["mode"], cut=opts["cut"])  # the same nodes, as the viewer
    graph.annotate(G, paths, "resources/neuronpedia" if Path("resources/neuronpedia").is_dir() else None)
    Path(out.graph).write_text(graph.to_html(G, f"saematch steering theme {wc.model} · {wc.theme}: "
                                                f"{features.height} features from {', '.join(seeds)}"))
    saes = steer.run_saes(paths, features)
    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    with job_device(snakemake.resources.gpu > 0, snakemake.config["steer"]["device"], "steer.device") as dev:
        model, tokenizer = load_lm(resolve_files(read(snakemake.input.model)), dev, opts["dtype"])
        saes = {site: {L: to_device(s, dev) for L, s in by_layer.items()} for site, by_layer in saes.items()}
        batches = None
        if opts["loss_tokens"]:
            data = opts["data"]
            text = snakemake.input.data if "path" in data else resolve(read(snakemake.input.data), "data")
            docs = read_documents(text, data.get("column", "text"))
            batches = [tuple(t.to(dev) for t in b) for b in
                       token_batches(docs, tokenizer, opts["loss_tokens"], opts["context"], 8)]
        generations, summary = steer.run_theme(model, tokenizer, opts["format"], features, seeds, saes, theme,
                                               opts["fold"], batches, opts["judge"], log=logging.info)
    provenance = {"theme": theme, "seeds": seeds, "options": {k: v for k, v in opts.items() if k != "theme"},
                  "algo_version": ALGO_VERSION}
    for path, frame in ((out.features, features), (out.generations, generations), (out.summary, summary)):
        write_frame(path, frame, provenance)
    summary.drop("features").write_csv(out.table, separator="\t", float_precision=4)
    figures.plot_steering(summary, out.figure, f"{wc.model} · {wc.theme}: {theme['how']} "
                          f"({features.height} features from {', '.join(seeds)})")
