"""The engines' keys: the pair's keys are PairKeys's (defined once), then the output keys."""

from __future__ import annotations

from mtreg_monai.engines import RegistrationKeys
from mtreg_monai.transforms import PAIR_KEYS, PairKeys


def test_pair_keys_are_taken_from_pair_keys():
    members = list(RegistrationKeys)
    assert [(m.name, m.value) for m in members[:4]] == [(k.name, k.value) for k in PairKeys]
    assert tuple(members[:4]) == PAIR_KEYS and RegistrationKeys.FIXED_IMAGE == PairKeys.FIXED_IMAGE
    assert RegistrationKeys("moving_label") is RegistrationKeys.MOVING_LABEL  # real members, found by value
    assert RegistrationKeys.DDF == "ddf" and "key" not in RegistrationKeys.__members__  # the loop variable is none
    assert len({m.value for m in members}) == len(members)
