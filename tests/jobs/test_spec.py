"""A job's typed spec: the run settings, each malformed one refused in one line naming it, the defaults and their
documented ranges accepted; the config's groups parsed into their packages' typed specs, with no file read."""
from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.jobs.spec import JobSpec
from tests.conftest import compose_config


def test_the_defaults_and_the_ends_of_each_range_pass():
    JobSpec.from_cfg(compose_config())
    JobSpec.from_cfg(compose_config("batch_size=1", "num_workers=0", "device=cuda:1", "cache.claim_timeout_s=0.5",
                                  "cache.force=true", "spice=true"))


@pytest.mark.parametrize("override, said", [
    ("batch_size=abc", "batch_size='abc' must be a whole number of at least 1"),
    ("batch_size=-3", "batch_size=-3 must be a whole number of at least 1"),
    ("batch_size=0", "batch_size=0 must be"),
    ("batch_size=2.5", "batch_size=2.5 must be"),
    ("batch_size=true", "batch_size=True must be"),
    ("num_workers=-1", "num_workers=-1 must be a whole number of at least 0"),
    ("num_workers=two", "num_workers='two' must be"),
    ("device=gpu", "device='gpu' is not a device: give auto, cpu, cuda or cuda:N"),
    ("device=cuda:x", "device='cuda:x' is not a device"),
    ("cache.claim_timeout_s=0", "cache.claim_timeout_s=0 must be a positive number of seconds"),
    ("cache.claim_timeout_s=nan", "cache.claim_timeout_s=nan must be"),
    ("cache.claim_timeout_s=soon", "cache.claim_timeout_s='soon' must be"),
    ("cache.enabled=maybe", "cache.enabled='maybe' must be true or false"),
    ("cache.force=1", "cache.force=1 must be true or false"),
    ("spice=yes", "spice='yes' must be true or false"),
])
def test_a_malformed_setting_is_refused_by_name(override, said):
    with pytest.raises(PipelineError) as refused:
        JobSpec.from_cfg(compose_config(override))
    assert str(refused.value).startswith(said) and "\n" not in str(refused.value)
