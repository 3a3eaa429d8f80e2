"""A sweep's job configs, composed as Hydra composes them but at a fraction of the cost, so a plan can key thousands
of jobs before any is launched.

Hydra composes each job from scratch (the defaults tree, every config file read again): about 90 ms a job with
the 121 model presets, seven minutes for open_clip's 121 x 38 suite. The jobs of a sweep differ in a few choices,
so here Hydra composes one job (the template) and, once for each distinct option a sweep chooses, that job with the
option swapped in; every other job is the template with those option nodes put in place and its value overrides
applied, as Hydra applies them (`OmegaConf.update(..., merge=True)` in struct mode). An option whose config touches
more than its own group's node (a `# @package _global_` preset, a defaults list overriding another group), and any
override that is not a plain group choice or value (`+`, `~`, `++`, a package), sends that job to Hydra itself, so
the result is always Hydra's; `tests/jobs/test_compose.py` compares the two over the catalog.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict


class Composer:
    """Job configs for the overrides of one sweep (`hydra`'s config loader and the sweep's primary config)."""

    def __init__(self, loader: Any, master: DictConfig) -> None:
        self.loader = loader
        self.master = master
        self.parser = OverridesParser.create()
        self.template: DictConfig | None = None
        self.template_overrides: dict[str, Override] = {}
        self.nodes: dict[tuple[str, str], DictConfig | None] = {}  # (group, option) -> its node; None: Hydra's
        self.fallbacks = 0  # jobs Hydra composed itself (the template and the options included)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The job's config, without its `hydra` node (what the task function is given)."""
        if self.template is None:
            self.template = self._hydra(overrides)
            self.template_overrides = {o.key_or_group: o for o in self.parser.parse_overrides(list(overrides))}
            return copy.deepcopy(self.template)
        parsed = {o.key_or_group: o for o in self.parser.parse_overrides(list(overrides))}
        if set(parsed) != set(self.template_overrides) or not all(map(simple, parsed.values())):
            return self._hydra(overrides)
        config = copy.deepcopy(self.template)
        for key, override in parsed.items():
            if override.input_line == self.template_overrides[key].input_line:
                continue
            if key.startswith("hydra"):  # a job's `hydra` node is not its config: Hydra sets it up
                return self._hydra(overrides)
            if self.is_group(key):
                node = self._option(key, str(override.value()))
                if node is None:
                    return self._hydra(overrides)
                with open_dict(config):
                    config[key] = copy.deepcopy(node)
            else:
                try:
                    OmegaConf.update(config, key, override.value(), merge=True)
                except Exception:  # Hydra says what is wrong with it
                    return self._hydra(overrides)
        return config

    def is_group(self, key: str) -> bool:
        return self.loader.repository.group_exists(key)

    def _option(self, group: str, option: str) -> DictConfig | None:
        """`group`'s node with `option` chosen, as Hydra composes it (the template's overrides with this one
        swapped); None where choosing it changes anything beyond that node."""
        if (group, option) not in self.nodes:
            lines = [line for line in self._template_lines() if line.split("=", 1)[0] != group]
            composed = self._hydra([*lines, f"{group}={option}"])
            same_elsewhere = _without(composed, group) == _without(self.template, group)
            self.nodes[(group, option)] = composed.get(group) if same_elsewhere else None
        return self.nodes[(group, option)]

    def _template_lines(self) -> list[str]:
        return [o.input_line for o in self.template_overrides.values()]

    def _hydra(self, overrides: Sequence[str]) -> DictConfig:
        self.fallbacks += 1
        config = self.loader.load_sweep_config(self.master, list(overrides))
        with open_dict(config):
            del config["hydra"]
        return config


def simple(override: Override) -> bool:
    """A plain choice or value (`key=value`): no add, delete, force-add, package or sweep."""
    return not (override.is_add() or override.is_delete() or override.is_force_add() or override.package is not None
                or override.is_sweep_override())


def _sets(line: str, key: str) -> bool:
    return line.split("=", 1)[0] == key


def _without(config: DictConfig, group: str) -> Any:
    """Everything but one group's node, unresolved (interpolations compared as written)."""
    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop(group, None)
    return plain
