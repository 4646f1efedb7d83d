"""Download one Neuronpedia set's explanations (public export, boto3) into resources/neuronpedia."""

import json

from saematch import logs

with logs.job(snakemake):
    from saematch.neuronpedia import download_explanations, load_explanations

    wc = snakemake.wildcards
    root = "resources/neuronpedia"
    files = download_explanations(wc.np_model, wc.np_set, root)
    explained = load_explanations(root, wc.np_model, wc.np_set)  # fails here on a malformed file
    with open(snakemake.output[0], "w") as fh:
        json.dump({"files": [str(f) for f in files], "features_explained": len(explained)}, fh, indent=1)
