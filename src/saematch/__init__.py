"""saematch: data-free matching of SAE features across the layers of a language model.

The data path, one module each: ``hub`` (download) → ``load`` (Gemma Scope / Llama Scope
files → :class:`~saematch.sae.Sae`) → ``fold`` → ``cost`` → ``solve`` (+ ``certify``,
``sparse``) → ``verdict`` (does each feature live on? its evidence, through ``calibrate``'s
model fitted on ``realmodels``: real SAEs with activation truth) → ``match`` (one pair end to
end) → ``write`` (Parquet + provenance) → ``lifetimes`` (chains across layers) → ``summary``;
on data, ``evaluate`` → ``verdict_data`` (the verdict re-fitted on an evaluation's labels), and
``steer`` (a theme's flow-graph features switched on or off while the model generates).
Reading the results: ``edges`` (the one graph of every relation between features) → ``graph``
(traces) and ``query`` (find, SQL) → ``cli``; ``figures`` draws every figure from those tables.
"""

__version__ = "0.1.0"

# Bump by hand whenever a change to the library changes results. It is a param of every
# compute rule, so Snakemake reruns exactly those jobs (imported code is invisible to its
# code trigger).
ALGO_VERSION = "6"
