"""environment.yml stays a thin wrapper over the pip install, so the two cannot drift."""

import tomllib

from conftest import ROOT
from omegaconf import OmegaConf


def test_environment_yml_installs_exactly_the_project():
    env = OmegaConf.to_container(OmegaConf.load(ROOT / "environment.yml"))
    deps = env["dependencies"]
    pip = [d for d in deps if isinstance(d, dict)]
    conda = [d for d in deps if isinstance(d, str)]
    assert pip == [{"pip": ['-e ".[dev]"']}]  # every Python dependency comes from pyproject.toml
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = next(d for d in conda if d.startswith("python="))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))
    assert "dev" in project["optional-dependencies"]
