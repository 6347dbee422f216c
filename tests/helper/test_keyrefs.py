"""helper/keyrefs: the helper's own names for a profile's keyring items, and the property that
keeps them apart from the gateway's (issue 9, finding 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import gateway as gwconf
from core.errors import ProfileError
from core.profile import Profile
from helper import keyrefs

GATEWAY = """format = 1

[gateway]
name = "office"
addresses = ["10.77.0.1/24"]
mode = "ephemeral"
listen_port = 51900
private_key = "{ref}"
"""


def test_refs_depend_only_on_the_profile_name() -> None:
    p = Profile("office", addresses=("10.0.0.2/32",), endpoint="192.0.2.1",
                private_key_ref="gw.private", psk_ref="anything/else")
    n = keyrefs.normalised(p)
    assert (n.private_key_ref, n.psk_ref) == ("profile:office:private", "profile:office:psk")
    assert keyrefs.normalised(n) is n
    bare = keyrefs.normalised(p.replace(private_key_ref="", psk_ref=""))
    assert (bare.private_key_ref, bare.psk_ref) == ("", "")


@pytest.mark.parametrize("ref", ["profile:office:private", "a:b"])
def test_a_gateway_configuration_cannot_spell_a_profile_ref(ref: str) -> None:
    with pytest.raises(ProfileError):
        gwconf.loads(GATEWAY.format(ref=ref))


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True))
def test_every_gateway_default_ref_lies_outside_the_profiles_namespace(name: str) -> None:
    gw = gwconf.loads(GATEWAY.replace('name = "office"', f'name = "{name}"')
                      .format(ref=""))
    assert not keyrefs.is_profile_ref(gw.private_key_ref)
    assert not keyrefs.is_profile_ref(f"{gw.name}.peer.psk")
