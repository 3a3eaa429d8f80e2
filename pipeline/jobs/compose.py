"""A sweep's job configs, resolved as Hydra composes and OmegaConf resolves them but at a fraction of the cost, so a
plan can key thousands of jobs before any is launched.

Hydra composes each job from scratch (the defaults tree, every config file read again: about 90 ms a job), and
OmegaConf parses every interpolation again each time a config is resolved (its grammar, ~0.3 ms an interpolation):
seven minutes and more for open_clip's 121 x 38 suite. The jobs of a sweep differ from one another in a few
overrides, so here Hydra composes one job (the template) and it is resolved once; each override a job changes (a
variation: `model=X`, `batch_size=8`) is applied once to the template alone and resolved, which shows which of
its top-level nodes it changes; a job is then the resolved template with its variations' nodes in place. A group
choice's node is read from its config file when that is what Hydra would put there (no defaults list, no package
header, and the template's own choice reads back equal to its node), else Hydra composes it.

Where two of a job's variations change one node (a value override inside the chosen group's node, `data_root`
with a swept dataset) the job is put together and resolved as a whole; any override that is not a plain group
choice or value (`+`, `~`, `++`, a package) or touches `hydra`, an option that changes more than its own node, and
a job whose overrides name other keys than the template's are composed by Hydra itself, so the result is always
Hydra's. `tests/jobs/test_compose.py` compares the two over the catalog.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variation:
    """One override applied to the template alone: the node it puts in place (its group's, unresolved) or the
    value it sets, and the resolved top-level nodes that differ from the template's because of it."""

    override: Override
    group_node: DictConfig | None
    changed: Mapping[str, Any]


class Composer:
    """Job configs for the overrides of one sweep (`hydra`'s config loader and the sweep's primary config)."""

    def __init__(self, loader: Any, master: DictConfig) -> None:
        self.loader = loader
        self.master = master
        self.parser = OverridesParser.create()
        self.repository: Any = None  # the sweep's config repository, search path included (None: unknown)
        self.template: DictConfig | None = None
        self.resolved: dict[str, Any] = {}
        self.template_overrides: dict[str, Override] = {}
        self.lines: dict[str, Override] = {}
        self.variations: dict[str, Variation | None] = {}  # by override line; None: Hydra composes such jobs
        self.fallbacks = 0  # configs Hydra composed (the template and the options it could not read included)

    def compose(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The job's config resolved to plain data, without its `hydra` node (what the task function is given,
        resolved)."""
        if self.template is None:
            self.template = self._hydra(overrides)
            self.resolved = _resolved(self.template)
            self.template_overrides = self._parsed(overrides)
            self.repository = self._repository(overrides)
            return copy.deepcopy(self.resolved)
        parsed = self._parsed(overrides)
        if (len(parsed) != len(overrides) or set(parsed) != set(self.template_overrides)
                or not all(map(simple, parsed.values()))):
            return _resolved(self._hydra(overrides))
        changed = [o for key, o in parsed.items() if o.input_line != self.template_overrides[key].input_line]
        variations = [self._variation(o) for o in changed]
        if any(v is None for v in variations):
            return _resolved(self._hydra(overrides))
        touched = [key for v in variations for key in v.changed]
        if len(touched) != len(set(touched)):
            return _resolved(self._together(variations))
        job = dict(self.resolved)
        for variation in variations:
            job.update(variation.changed)
        return copy.deepcopy(job)

    def _parsed(self, overrides: Sequence[str]) -> dict[str, Override]:
        """The job's overrides by key; each distinct line is parsed once (Hydra's grammar, ~0.2 ms a line)."""
        for line in overrides:
            if line not in self.lines:
                self.lines[line] = self.parser.parse_overrides([line])[0]
        return {self.lines[line].key_or_group: self.lines[line] for line in overrides}

    def is_group(self, key: str) -> bool:
        return (self.repository or self.loader.repository).group_exists(key)

    def _variation(self, override: Override) -> Variation | None:
        line = override.input_line
        if line not in self.variations:
            self.variations[line] = self._vary(override)
        return self.variations[line]

    def _vary(self, override: Override) -> Variation | None:
        key = override.key_or_group
        if key.split(".", 1)[0] == "hydra":  # a job's `hydra` node is not its config: Hydra sets it up
            return None
        node = None
        if self.is_group(key):
            node = self._option(key, str(override.value()))
            if node is None:
                return None
        try:
            resolved = _resolved(self._together([Variation(override, node, {})]))
        except Exception:  # Hydra says what is wrong with it
            return None
        if set(resolved) != set(self.resolved):
            return None
        own = key.split(".", 1)[0]
        return Variation(override, node, {k: v for k, v in resolved.items() if k == own or v != self.resolved[k]})

    def _together(self, variations: Sequence[Variation]) -> DictConfig:
        """The template with every variation applied, unresolved."""
        config = copy.deepcopy(self.template)
        for variation in variations:
            key = variation.override.key_or_group
            if variation.group_node is not None:
                with open_dict(config):
                    config[key] = copy.deepcopy(variation.group_node)
            else:
                OmegaConf.update(config, key, variation.override.value(), merge=True)
        return config

    def _option(self, group: str, option: str) -> DictConfig | None:
        """`group`'s node with `option` chosen, as Hydra composes it; None where choosing it changes anything
        beyond that node."""
        read = self._read_option(group, option)
        if read is not None:
            return read
        lines = [o.input_line for o in self.template_overrides.values() if o.key_or_group != group]
        composed = self._hydra([*lines, f"{group}={option}"])
        if _without(composed, group) != _without(self.template, group):
            return None
        return composed.get(group)

    def _read_option(self, group: str, option: str) -> DictConfig | None:
        """The option's config file as Hydra would place it at `group`: only for a group whose template node reads
        back equal to the template's own option file (nothing else in the composition writes into it)."""
        chosen = self.template_overrides.get(group)
        if self.repository is None or chosen is None:
            return None
        template_file = self._plain_file(group, str(chosen.value()))
        if template_file is None or template_file != OmegaConf.to_container(self.template[group], resolve=False):
            return None
        loaded = self._plain_file(group, option)
        return None if loaded is None else OmegaConf.create(loaded)

    def _plain_file(self, group: str, option: str) -> dict | None:
        """An option's file as plain data when Hydra would merge it as it is into its group's node: no defaults
        list, no package header, no schema."""
        try:
            found = self.repository.load_config(f"{group}/{option}")
        except Exception:
            return None
        if (found is None or found.defaults_list or found.header.get("package") is not None
                or found.is_schema_source or not isinstance(found.config, DictConfig)):
            return None
        return OmegaConf.to_container(found.config, resolve=False)

    def _repository(self, overrides: Sequence[str]) -> Any:
        """The repository Hydra composes this sweep's jobs from (its search path included). Hydra makes one per
        composition and has no public way to ask for it; without it every option is composed by Hydra."""
        make = getattr(self.loader, "_parse_overrides_and_create_caching_repo", None)
        if make is None:
            return None
        try:
            hydra_overrides = OmegaConf.to_container(self.master.hydra.overrides.hydra)  # as load_sweep_config does
            return make(self.master.hydra.job.config_name, [*hydra_overrides, *overrides])[1]
        except Exception as exc:  # noqa: BLE001 (any failure only costs speed)
            log.debug("no config repository for the plan: %s", exc)
            return None

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


def _resolved(config: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(config, resolve=True)


def _without(config: DictConfig, group: str) -> Any:
    """Everything but one group's node, unresolved (interpolations compared as written)."""
    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop(group, None)
    return plain
