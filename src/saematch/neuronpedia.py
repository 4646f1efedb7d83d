"""Neuronpedia: feature ids, page links and explanations from its public export.

Ids and links (../shared/reference/neuronpedia.md): a feature page is
``https://www.neuronpedia.org/{model}/{set}/{index}``, e.g. model ``gemma-2-2b``, set
``12-gemmascope-res-16k``. Only the canonical L0 SAE of each layer has pages: any other
variant gets a note saying so instead of a link that would show another SAE's feature.

Explanations come from the public bulk export (S3 bucket ``neuronpedia-datasets``, prefix
``v1/``): ``v1/{model}/{set}/explanations/batch-{n}.jsonl.gz``, one JSON object per line
with ``index`` stored as a string; a feature has zero, one or several explanations. A local
copy keeps the same layout under a root folder.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from .config import fill

SITE_URL = "https://www.neuronpedia.org"
BUCKET = "neuronpedia-datasets"


def page(model: str, set_id: str, index: int) -> str:
    return f"{SITE_URL}/{model}/{set_id}/{index}"


def set_for(catalog_entry: dict, site: str, layer: int, l0=None, model: str = "<model>") -> dict:
    """{"model", "set"} of this SAE's Neuronpedia set, or {"note"} saying why there is none.

    ``catalog_entry``: the config's catalog entry of the model (its ``neuronpedia`` key:
    ``model`` and ``sets`` per site, a template in {layer} and {width}, or a mapping width →
    template). ``l0``: the L0 this run uses, None where the format has no L0 choice; a value
    other than the catalog's (canonical) one has no page. Both ids name the folder of the set's
    explanations (resources/neuronpedia/v1/{model}/{set}/): a value that would take it out of
    its folder raises ConfigError naming ``catalog.{model}.neuronpedia...``.
    """
    np_cfg = catalog_entry.get("neuronpedia")
    if not np_cfg:
        return {"note": "no Neuronpedia pages for this model"}
    key = f"catalog.{model}.neuronpedia"
    np_model = fill(np_cfg["model"], {}, f"{key}.model")
    template, key = np_cfg.get("sets", {}).get(site), f"{key}.sets.{site}"
    if isinstance(template, dict):
        template, key = template.get(catalog_entry["width"]), f"{key}.{catalog_entry['width']}"
    if not template:
        return {"note": f"no Neuronpedia set known for {site} at width {catalog_entry['width']}"}
    canonical = catalog_entry["sites"][site].get("l0")
    if isinstance(canonical, dict):
        canonical = canonical.get(catalog_entry["width"])
    if l0 is not None and canonical is not None and str(canonical[layer]) != str(l0):
        return {"note": f"L0 {l0} is not the canonical L0 ({canonical[layer]}): Neuronpedia has no page for this SAE"}
    return {"model": np_model, "set": fill(template, {"layer": layer, "width": catalog_entry["width"]}, key)}


def annotate(node: dict, where: dict, index: int, explanations: dict | None = None) -> dict:
    """Node attributes: neuronpedia_id and url (or neuronpedia_note), and the explanation(s)."""
    out = {}
    if "set" in where:
        out["neuronpedia_id"] = f"{where['model']}/{where['set']}/{index}"
        out["url"] = page(where["model"], where["set"], index)
    else:
        out["neuronpedia_note"] = where.get("note", "no Neuronpedia page")
    if explanations and index in explanations:
        out["explanation"] = " | ".join(explanations[index])
    return {**node, **out}


# ESC sequences (CSI such as colours, OSC such as window titles, two-byte ones), then any other
# C0 or C1 control character or DEL; tab and newline stay
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (tab and newline
    kept): an explanation is printed, and written into GraphML and the viewer."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def explanation_files(root: str | Path, model: str, set_id: str) -> list[Path]:
    return sorted((Path(root) / "v1" / model / set_id / "explanations").glob("batch-*.jsonl.gz"))


def load_explanations(root: str | Path, model: str, set_id: str) -> dict[int, list[str]]:
    """index → its explanations' descriptions (control characters removed: :func:`clean_text`),
    from a local copy of the export (empty where there is none). A malformed line raises
    ValueError naming the file and line."""
    out: dict[int, list[str]] = {}
    for path in explanation_files(root, model, set_id):
        n = 0
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        index = int(row["index"])
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        raise ValueError(f"{path}:{n}: not an explanation row ({exc})") from None
                    description = clean_text(str(row.get("description") or ""))
                    if description:
                        out.setdefault(index, []).append(description)
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # not gzip, cut short, not UTF-8
            raise ValueError(f"{path}:{n + 1}: not a readable explanations file ({exc})") from None
    return out


def download_explanations(model: str, set_id: str, root: str | Path) -> list[Path]:
    """Copy ``v1/{model}/{set}/explanations/`` of the public export into ``root`` (same
    layout), with boto3 and unsigned requests (pip install boto3). Returns the files."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(signature_version=UNSIGNED))
    prefix = f"v1/{model}/{set_id}/explanations/"
    files = []
    for page_ in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page_.get("Contents", []):
            name = obj["Key"][len(prefix):]  # a file of the set's folder, never a path out of it
            if not obj["Key"].startswith(prefix) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"s3://{BUCKET}/{obj['Key']}: not a file of {prefix}: nothing written there")
            dest = Path(root) / obj["Key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            s3.download_file(BUCKET, obj["Key"], str(tmp))
            tmp.replace(dest)
            files.append(dest)
    if not files:
        raise ValueError(f"s3://{BUCKET}/{prefix}: no explanation files (is {model}/{set_id} a Neuronpedia set?)")
    return files
