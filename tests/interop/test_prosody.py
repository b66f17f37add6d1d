"""Interop cases against a real Prosody (see conftest.py for the topology).

Every case runs in "plain" and "tls" mode (session-scoped `mode` fixture). The first three cases
need only Prosody and prove the harness itself; the dialbackd cases skip when the binary is missing.
Keep test_6_restart last: it restarts dialbackd.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time

from interop_lib import (COMPONENT, COMPONENT_SECRET, DIALBACK, DIALBACKD_SECRET, IP_PROSODY,
                         NS_DB, NS_STREAM, NS_TLS, PROSODY, PROSODY2, PROSODY_SECRETS, Client,
                         Component, IqError, IqTimeout, NotReceived, RawStream, describe,
                         dns_query, error_condition, is_error, run, stream_error, wait_until,
                         xep0185_key)

BOT = f"bot@{COMPONENT}"
DB_RESULT = f"{{{NS_DB}}}result"
DB_VERIFY = f"{{{NS_DB}}}verify"
FEATURES = f"{{{NS_STREAM}}}features"


def log_has(path, needle: str, offset: int = 0) -> bool:
    """`needle` occurs in the log file after byte `offset`."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False


def log_size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------
# Harness self-checks (no dialbackd needed)

def test_dns_zone(dns):
    """dnsmasq answers the SRV/A records of the test zone, and nothing outside it."""
    for name in (PROSODY, PROSODY2, DIALBACK, COMPONENT):
        rcode, an, _ = dns_query(f"_xmpp-server._tcp.{name}", 33)
        assert (rcode, an >= 1) == (0, True), f"SRV {name}: rcode={rcode} answers={an}"
    for name in (PROSODY, PROSODY2, DIALBACK):
        rcode, an, _ = dns_query(name, 1)
        assert (rcode, an) == (0, 1), f"A {name}: rcode={rcode} answers={an}"
    rcode, an, _ = dns_query("nosuch.test", 1)
    assert rcode == 3, f"nosuch.test should be NXDOMAIN, rcode={rcode}"


def _starttls_if_offered(raw: RawStream, frm: str, to: str, mode: str):
    feats = raw.expect(FEATURES)
    if mode == "tls":
        assert feats.find(f"{{{NS_TLS}}}starttls") is not None, describe(feats)
        raw.starttls()
        raw.open(frm, to)
        feats = raw.expect(FEATURES)
    return feats


def test_prosody_dialback_key_oracle(prosody, mode):
    """Prosody, as Authoritative Server, validates exactly the XEP-0185 key we compute."""
    raw = RawStream(IP_PROSODY, 5269)
    try:
        raw.open(DIALBACK, PROSODY)
        _starttls_if_offered(raw, DIALBACK, PROSODY, mode)
        sid = "oracle-" + secrets.token_hex(8)
        good = xep0185_key(PROSODY_SECRETS[PROSODY], DIALBACK, PROSODY, sid)
        raw.send(f"<db:verify from='{DIALBACK}' to='{PROSODY}' id='{sid}'>{good}</db:verify>")
        ans = raw.expect(DB_VERIFY, 10)
        assert ans.get("type") == "valid", describe(ans)
        assert ans.get("id") == sid, describe(ans)
        raw.send(f"<db:verify from='{DIALBACK}' to='{PROSODY}' id='{sid}x'>{good}</db:verify>")
        ans = raw.expect(DB_VERIFY, 10)
        assert ans.get("type") == "invalid", describe(ans)
    finally:
        raw.close()


def test_prosody_federation_sanity(prosody, prosody2, mode):
    """Two Prosodys federate by dialback through the test DNS: alice <-> bob both ways."""
    async def scenario():
        alice = await Client(prosody.user_jid, prosody.password, prosody.ip).start()
        bob = await Client(prosody2.user_jid, prosody2.password, prosody2.ip).start()
        try:
            alice.send_message(mto=prosody2.user_jid, mbody="hello bob", mtype="chat")
            m = await bob.inbox.get(lambda s: s["body"] == "hello bob", 30)
            assert m["from"].bare == prosody.user_jid
            bob.send_message(mto=prosody.user_jid, mbody="hello alice", mtype="chat")
            await alice.inbox.get(lambda s: s["body"] == "hello alice", 30)
        finally:
            await alice.close()
            await bob.close()

    t0 = time.monotonic()
    run(scenario(), 70)
    print(f"federation {mode}: {time.monotonic() - t0:.2f}s")
    text = prosody2.log.read_text(errors="replace")
    assert "is now authenticated for prosody.test" in text, "no s2s authentication in the log"
    encrypted = any("Stream encrypted" in line for line in text.splitlines()
                    if line.split("\t")[0].split()[-1].startswith("s2s"))
    assert encrypted == (mode == "tls"), f"s2s encryption in {mode} mode: {encrypted}"


# ---------------------------------------------------------------------------------------------
# dialbackd cases

async def _alice_and_bot(prosody, dialbackd):
    alice = await Client(prosody.user_jid, prosody.password, prosody.ip).start()
    bot = await Component(COMPONENT, COMPONENT_SECRET, dialbackd.ip).start()
    return alice, bot


async def _close(*actors):
    for a in actors:
        await a.close()


def test_0_dialbackd_key_oracle(dialbackd, mode):
    """dialbackd, as Authoritative Server, validates exactly the XEP-0185 key of its secret
    (hex(HMAC-SHA256(hex(SHA256(secret)), "receiving originating id"))) and nothing else."""
    raw = RawStream(dialbackd.ip, 5269)
    try:
        raw.open(PROSODY, DIALBACK)
        _starttls_if_offered(raw, PROSODY, DIALBACK, mode)
        sid = "oracle-" + secrets.token_hex(8)
        good = xep0185_key(DIALBACKD_SECRET, PROSODY, DIALBACK, sid)
        raw.send(f"<db:verify from='{PROSODY}' to='{DIALBACK}' id='{sid}'>{good}</db:verify>")
        ans = raw.expect(DB_VERIFY, 10)
        assert (ans.get("type"), ans.get("id")) == ("valid", sid), describe(ans)
        assert (ans.get("from"), ans.get("to")) == (DIALBACK, PROSODY), describe(ans)
        bad = xep0185_key(DIALBACKD_SECRET, PROSODY, DIALBACK, sid + "x")
        raw.send(f"<db:verify from='{PROSODY}' to='{DIALBACK}' id='{sid}'>{bad}</db:verify>")
        ans = raw.expect(DB_VERIFY, 10)
        assert ans.get("type") == "invalid", describe(ans)
    finally:
        raw.close()


def test_1_prosody_user_to_component(prosody, dialbackd, mode):
    async def scenario():
        alice, bot = await _alice_and_bot(prosody, dialbackd)
        try:
            alice.send_message(mto=BOT, mbody=f"hi bot ({mode})", mtype="chat")
            m = await bot.inbox.get(lambda s: s["body"] == f"hi bot ({mode})", 40)
            assert m["from"].bare == prosody.user_jid
            assert m["to"].bare == BOT
        finally:
            await _close(alice, bot)
    run(scenario(), 70)


def test_2_component_to_prosody_user(prosody, dialbackd, mode):
    """dialbackd initiates to prosody.test; Prosody calls dialbackd back as Authoritative Server."""
    async def scenario():
        alice, bot = await _alice_and_bot(prosody, dialbackd)
        try:
            bot.send_message(mto=prosody.user_jid, mfrom=BOT, mbody=f"hi alice ({mode})",
                             mtype="chat")
            m = await alice.inbox.get(lambda s: s["body"] == f"hi alice ({mode})", 40)
            assert m["from"].bare == BOT
        finally:
            await _close(alice, bot)
    run(scenario(), 70)


def test_3_ping_dialback_domain(prosody, dialbackd, mode):
    """XEP-0199 ping alice -> dialback.test gets an iq result."""
    async def scenario():
        alice = await Client(prosody.user_jid, prosody.password, prosody.ip).start()
        try:
            try:
                rtt = await alice["xep_0199"].ping(jid=DIALBACK, timeout=30)
            except IqError as e:
                raise AssertionError(f"ping answered with error: {e.iq}")
            except IqTimeout:
                raise AssertionError("ping timed out (30 s)")
            print(f"ping {mode}: rtt {rtt:.3f}s")
        finally:
            await alice.close()
    run(scenario(), 50)


def _forged_db_result(raw: RawStream) -> str:
    fake = secrets.token_hex(32)  # 64 made-up hex chars
    raw.send(f"<db:result from='{PROSODY}' to='{DIALBACK}'>{fake}</db:result>")
    return fake


def _mallory_message(raw: RawStream, tag: str) -> str:
    """Send a stanza claiming prosody.test; return what dialbackd did next (for the report)."""
    try:
        raw.send(f"<message from='mallory@{PROSODY}' to='{BOT}' type='chat' id='{tag}'>"
                 f"<body>spoofed {tag}</body></message>")
    except OSError as e:
        return f"send failed: {e}"
    try:
        el = raw.next(5)
    except TimeoutError:
        return "silence (stream left open)"
    cond = stream_error(el)
    return f"stream error <{cond}/>" if cond else describe(el)


def test_4_spoofed_prosody_is_refused(prosody, dialbackd, mode):
    """A stranger claiming prosody.test gets `invalid` (after dialbackd asks the real Prosody) and
    its stanzas never reach the component, neither after the failed dialback nor on a stream that
    never tried dialback. TLS mode: dialback on a plaintext stream is first refused with
    policy-violation (require_encryption), then the same spoof over STARTTLS gets `invalid`."""
    tls = mode == "tls"
    report = {}

    async def component_gets_nothing(actions):
        bot = await Component(COMPONENT, COMPONENT_SECRET, dialbackd.ip).start()
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, actions)
            await bot.inbox.expect_nothing(lambda s: "mallory" in str(s["from"]), within=5)
        finally:
            await bot.close()

    def plaintext_refused():
        raw = RawStream(dialbackd.ip, 5269)
        try:
            raw.open(PROSODY, DIALBACK)
            raw.expect(FEATURES)
            _forged_db_result(raw)
            el = raw.next(20)
            cond = stream_error(el) or (error_condition(el) if el is not None else None)
            report["plaintext db:result"] = describe(el)
            assert cond == "policy-violation", \
                f"plaintext dialback with require_encryption: expected policy-violation, " \
                f"got {describe(el)}"
            assert el is None or el.get("type") != "valid"
            report["plaintext, then message"] = _mallory_message(raw, "plaintext")
        finally:
            raw.close()

    def forged_key():
        raw = RawStream(dialbackd.ip, 5269)
        try:
            raw.open(PROSODY, DIALBACK)
            _starttls_if_offered(raw, PROSODY, DIALBACK, mode)
            mark = log_size(prosody.log)
            _forged_db_result(raw)
            ans = raw.next(30)
            assert ans is not None and ans.tag == DB_RESULT, \
                f"expected <db:result type='invalid'/>, got {describe(ans)}"
            assert ans.get("type") == "invalid", describe(ans)
            report["forged db:result"] = describe(ans)
            # dialbackd really asked Prosody, the Authoritative Server for prosody.test
            wait_until(lambda: log_has(prosody.log, "Asked to verify a dialback key that was "
                                                    "incorrect", mark),
                       10, "Prosody to log the rejected db:verify")
            report["after invalid, message"] = _mallory_message(raw, "after-invalid")
        finally:
            raw.close()

    def no_dialback_at_all():
        raw = RawStream(dialbackd.ip, 5269)
        try:
            raw.open(PROSODY, DIALBACK)
            _starttls_if_offered(raw, PROSODY, DIALBACK, mode)
            report["no dialback, message"] = _mallory_message(raw, "no-dialback")
        finally:
            raw.close()

    if tls:
        run(component_gets_nothing(plaintext_refused), 60)
    run(component_gets_nothing(forged_key), 80)
    run(component_gets_nothing(no_dialback_at_all), 40)
    for k, v in report.items():
        print(f"spoof {mode}: {k}: {v}")


def test_5_unknown_local_jid_bounces(prosody, dialbackd, mode):
    async def scenario():
        alice = await Client(prosody.user_jid, prosody.password, prosody.ip).start()
        try:
            alice.send_message(mto=f"nobody@{DIALBACK}", mbody="anyone?", mtype="chat")
            err = await alice.inbox.get(lambda s: s["type"] == "error", 40)
            assert err["from"].bare == f"nobody@{DIALBACK}", err
            assert is_error(err, "service-unavailable"), err
        finally:
            await alice.close()
    run(scenario(), 60)


def _check(dialbackd, domain: str):
    """`dialbackd check DOMAIN --from dialback.test` with the running daemon's config (same
    secret, so Prosody's callback to dialback.test gets an answer)."""
    out = subprocess.run(
        [str(dialbackd.bin), "check", domain, "--from", DIALBACK, "--config", str(dialbackd.cfg)],
        capture_output=True, text=True, timeout=120)
    report = f"exit {out.returncode}\n{out.stdout}{out.stderr}"
    print(report)
    return out.returncode, out.stdout, report


def test_5_check_prosody(prosody, dialbackd, mode):
    """`dialbackd check prosody.test`: DNS, connect, STARTTLS (tls mode) and a real dialback
    round trip that Prosody answers `valid` after calling dialbackd back (XEP-0220 §2.1)."""
    offset = log_size(prosody.log)
    code, out, report = _check(dialbackd, PROSODY)
    assert code == 0, report
    wanted = [
        f"dialbackd check {PROSODY} (from {DIALBACK},",
        f"✔ _xmpp-server._tcp.{PROSODY}: 1 record",
        f"✔ {PROSODY}:5269: {IP_PROSODY}",
        f"✔ {IP_PROSODY}:5269 ({PROSODY}): connected",
        f"✔ {PROSODY} answered valid",
        "✔ all checks passed",
    ]
    if mode == "tls":
        wanted += [
            "✔ STARTTLS offered",
            "✔ TLS handshake: TLSv1.",
            f"✔ certificate names: {PROSODY}",
            f"✔ valid for {PROSODY}",
            "⚠ chain: CA used as end entity",  # the harness's `openssl req -x509` (CA:TRUE)
            "⚠ expires on",                    # ... made for 3 days
        ]
    else:
        wanted.append("⚠ STARTTLS not offered: dialback runs in plaintext")
    for w in wanted:
        assert w in out, f"missing {w!r}\n{report}"
    assert "✘" not in out, report
    # Prosody really verified the key with dialbackd.
    wait_until(lambda: log_has(prosody.log, f"is now authenticated for {DIALBACK}", offset), 10,
               "Prosody to log the authentication of dialback.test")


def test_5_check_domain_without_server(dialbackd, mode):
    """`dialbackd check` of a domain with no server fails with a hint and exit status 1."""
    code, out, report = _check(dialbackd, "nosuch.test")
    assert code == 1, report
    assert "✘ nosuch.test:5269: no A/AAAA records" in out, report
    assert "hint: nosuch.test has neither _xmpp-server._tcp SRV records nor an address" in out, \
        report
    assert "✘ 1 check failed" in out, report


def test_6_restart_dialbackd(prosody, dialbackd, mode):
    """SIGTERM dialbackd (Prosody keeps its now-dead stream), start it again: the next message
    alice -> bot gets through once Prosody notices (bounded retries, ~30 s)."""
    # Make sure Prosody has an established route to the component first.
    test_1_prosody_user_to_component(prosody, dialbackd, mode)
    rc = dialbackd.stop(timeout=15)
    assert rc == 0, f"dialbackd exited with {rc} on SIGTERM (design: graceful exit 0)"
    dialbackd.start()

    async def scenario():
        alice, bot = await _alice_and_bot(prosody, dialbackd)
        try:
            deadline = time.monotonic() + 45
            n = 0
            while True:
                n += 1
                alice.send_message(mto=BOT, mbody=f"after restart #{n}", mtype="chat")
                try:
                    await bot.inbox.get(lambda s: s["body"].startswith("after restart"), 5)
                    break
                except NotReceived:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no message reached the component after restart "
                                             f"({n} attempts)")
            print(f"restart {mode}: delivered after {n} attempt(s)")
        finally:
            await _close(alice, bot)
    run(scenario(), 75)
