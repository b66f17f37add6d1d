"""biboumi (Debian's XMPP-to-IRC gateway) as an XEP-0114 component of dialbackd: a Prosody user
asks irc.dialback.test for service discovery across federation (prosody.test -> dialbackd by
dialback, dialbackd -> biboumi over the component protocol) and gets biboumi's own answer.
No IRC server is needed for that.
"""

from __future__ import annotations

from interop_lib import IRC, Client, IqError, IqTimeout, run

DISCO_INFO = "http://jabber.org/protocol/disco#info"


def test_7_prosody_user_discovers_biboumi(prosody, dialbackd, biboumi, mode):
    async def scenario():
        alice = await Client(prosody.user_jid, prosody.password, prosody.ip).start()
        try:
            try:
                iq = await alice["xep_0030"].get_info(jid=IRC, timeout=30)
            except IqError as e:
                raise AssertionError(f"disco#info answered with an error: {e.iq}")
            except IqTimeout:
                raise AssertionError("disco#info to biboumi timed out (30 s)")
            assert iq["from"].bare == IRC, iq
            info = iq["disco_info"]
            identities = {(c, t) for (c, t, _lang, _name) in info["identities"]}
            features = set(info["features"])
            print(f"biboumi {mode}: identities {sorted(identities)}, {len(features)} features")
            # biboumi's gateway identity (conference/irc), not dialbackd's server/im.
            assert ("conference", "irc") in identities, identities
            assert ("server", "im") not in identities, identities
            assert DISCO_INFO in features, features
        finally:
            await alice.close()
    run(scenario(), 50)
