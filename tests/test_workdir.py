"""Nothing the workflow writes lands outside its working directory, whatever the catalog says:
every path made from a catalog template is checked once filled, before any job or log."""

from __future__ import annotations

import re

import pytest

from test_workflow import copy_workflow, smk

pytestmark = pytest.mark.workflow
UP = "../" * 10  # from the deepest folder a template reaches, out of the working directory


@pytest.fixture(scope="module")
def nest(tmp_path_factory):
    """A copy of the workflow six folders below a fresh root, so that an escape lands in the root."""
    root = tmp_path_factory.mktemp("nest")
    return root, copy_workflow(root / "a/b/c/d/e/f/work")


def stray(root, work) -> list[str]:
    """Whatever exists under ``root`` but neither in ``work`` nor on the way to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p != work and work not in p.parents and p not in work.parents)


@pytest.mark.parametrize("args,message", [
    (["catalog={demo: {sites: {res: {per_layer: {4: {l0: \"x/" + UP + "C_escape/pwn\"}}}}}}"],
     r'config: catalog\.demo\.sites\.res\.per_layer\.4\.l0 → "layer_4/width_1k/average_l0_x/(\.\./){10}C_escape/pwn/'
     r"params\.npz\": a path may not leave its folder \('\.\.'\)"),
    (["catalog={demo: {sites: {res: {l0: [31, 33, 35, 37, \"x/" + UP + "C_escape/pwn\", 41]}}}}"],
     r'config: catalog\.demo\.sites\.res\.l0\[4\] → "layer_4/width_1k/average_l0_x/(\.\./){10}C_escape/pwn/params\.npz"'
     r": a path may not leave its folder"),
    (["flow={explanations: true}",
      "catalog={demo: {neuronpedia: {model: demo, sets: {res: \"" + UP + "NP_escape/{layer}\"}}}}"],
     r'config: catalog\.demo\.neuronpedia\.sets\.res → "(\.\./){10}NP_escape/3": a path may not leave its folder'),
    (["catalog={demo: {sites: {res: {files: {params: \"layer_{layer}/{oops}/params.npz\"}}}}}"],
     re.escape('config: catalog.demo.sites.res.files.params: unknown field {oops} in "layer_{layer}/{oops}/params.npz"; '
               "fields: layer, l0, width")),
])
def test_a_catalog_value_that_would_write_outside_the_working_directory_stops_the_run_before_any_job(
        nest, args, message):
    root, work = nest
    out = smk(work, "--config", "models=[demo]", "sites=[res]", "layers=[3,4]", *args, check=False)
    console = out.stdout + out.stderr
    assert out.returncode != 0
    assert re.search(message, console), console[-3000:]
    assert "Traceback" not in console
    # the reason alone, in one line: not Snakemake's "ConfigError in file …" header and code frames
    assert "ConfigError in file" not in console and '  File "' not in console, console[-3000:]
    assert not any((work / d).exists() for d in ("logs", "results", "resources", "benchmarks"))
    assert stray(root, work) == []
