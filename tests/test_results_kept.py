"""Results are never lost: every file a run makes is a target of the default run, so a plain
`snakemake` rebuilds any that went missing (an interrupted forced rerun deletes a job's outputs
before the job runs). Dry-runs of a pristine copy only; the end-to-end cases are in
test_reruns.py, on its finished demo workdir."""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from saematch.write import NotWritableError, write_matches
from test_workflow import copy_workflow, smk
from test_write import columns


@contextmanager
def read_only(folder: Path):
    """The folder and its files unwritable, for root too (chattr +i) or by mode bits."""
    root = os.geteuid() == 0
    subprocess.run(["chattr", "-R", "+i", str(folder)] if root else ["chmod", "-R", "a-w", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(folder)] if root else ["chmod", "-R", "u+w", str(folder)],
                       check=True)


def test_a_folder_made_read_only_while_a_job_runs_is_named_and_its_file_kept(tmp_path):
    path = tmp_path / "matches/site=res/layer=1/part-0.parquet"
    write_matches(path, columns(), {"run": 1})
    before = path.read_bytes()
    with read_only(path.parent), pytest.raises(NotWritableError) as err:
        write_matches(path, columns(), {"run": 2})
    assert str(err.value).startswith(f"{path.parent}: not writable (")
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("kept"))


def planned_files(workdir, *args: str) -> tuple[set[str], set[str]]:
    """(every output of every job, the inputs of rule all) of a forced dry-run."""
    out = smk(workdir, "-n", "--forceall", *args).stdout
    outputs, targets = set(), set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        for key, files in re.findall(r"^    (output|input): (.*)$", block, re.M):
            paths = set(files.split(", "))
            if rule[1] == "all" and key == "input":
                targets |= paths
            elif key == "output":
                outputs |= paths
    return outputs, targets


@pytest.mark.workflow
@pytest.mark.parametrize("args", [[], ["--config", "sites=[mlp,att]", "layers=[0,1,2]"]],
                         ids=["default", "no-flow"])
def test_every_file_a_run_makes_is_a_target_of_the_default_run(pristine, args):
    outputs, targets = planned_files(pristine, *args)
    assert any("/evaluation/" in p and p.endswith("/pairs.parquet") for p in outputs)  # the run evaluates
    assert sorted(outputs - targets) == []


@pytest.mark.workflow
@pytest.mark.parametrize("args, downloads", [(["sites=[res]", "layers=[1,2,4]"], 2),  # layer 4: in no pair, no flow
                                             (["sites=[res,mlp]", "layers=[1,2,4]"], 6)])  # flow reads res 4, mlp 4
def test_a_run_downloads_only_the_saes_its_jobs_read(pristine, args, downloads):
    from test_workflow import planned_jobs

    assert planned_jobs(pristine, "--config", "models=[gemma-2-2b]", *args)["download_sae"] == downloads
