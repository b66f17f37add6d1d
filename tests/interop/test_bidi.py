"""XEP-0288 bidirectional streams against a real Prosody with mod_s2s_bidi (bidi.test and
bidi2.test on 127.0.10.4; see conftest.py). Each case runs in plain and tls mode and cites the
rules it proves (standards.md §1.3).

The TCP connections between the two servers are counted from /proc: the sockets each process
holds (/proc/PID/fd) matched end to end in /proc/net/tcp, ESTABLISHED only.
"""

from __future__ import annotations

import os

from interop_lib import (COMPONENT, COMPONENT_SECRET, PROSODY_BIDI, PROSODY_BIDI2, USERS, Client,
                         Component, run, wait_until)

BOT = f"bot@{COMPONENT}"


def log_has(path, needle: str, offset: int = 0) -> bool:
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


def _established() -> dict[int, tuple[str, str]]:
    """inode -> (local, remote) of every ESTABLISHED TCP socket on the machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "01":
                out[int(f[9])] = (f[1], f[2])
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connections_between(pid_a: int, pid_b: int) -> int:
    """TCP connections with one end held by process `pid_a` and the other by `pid_b`."""
    table = _established()
    ends_a = [table[i] for i in _socket_inodes(pid_a) if i in table]
    ends_b = {table[i] for i in _socket_inodes(pid_b) if i in table}
    return sum(1 for local, remote in ends_a if (remote, local) in ends_b)


def _between(prosody_bidi, dialbackd) -> int:
    return connections_between(prosody_bidi.proc.pid, dialbackd.proc.pid)


async def _both_ways(user_jid: str, password: str, ip: str, dialbackd, tag: str, user_first: bool):
    """Two rounds of messages between `user_jid` and the component bot, the user or the bot
    speaking first."""
    user = await Client(user_jid, password, ip).start()
    bot = await Component(COMPONENT, COMPONENT_SECRET, dialbackd.ip).start()
    try:
        for n in range(2):
            to_bot, to_user = f"{tag} to bot {n}", f"{tag} to user {n}"
            if user_first:
                user.send_message(mto=BOT, mbody=to_bot, mtype="chat")
                m = await bot.inbox.get(lambda s, b=to_bot: s["body"] == b, 40)
                assert m["from"].bare == user_jid
            bot.send_message(mto=user_jid, mfrom=BOT, mbody=to_user, mtype="chat")
            m = await user.inbox.get(lambda s, b=to_user: s["body"] == b, 40)
            assert m["from"].bare == BOT
            if not user_first:
                user.send_message(mto=BOT, mbody=to_bot, mtype="chat")
                m = await bot.inbox.get(lambda s, b=to_bot: s["body"] == b, 40)
                assert m["from"].bare == user_jid
    finally:
        await user.close()
        await bot.close()


def test_bidi_1_prosody_first_one_connection_both_ways(prosody_bidi, dialbackd, mode):
    """BIDI-01..03: carol@bidi.test writes first. Prosody sees our bidi feature (after STARTTLS
    in tls mode) and asks for bidi; dialbackd checks bidi.test's key on a verify connection of
    its own (never on the stream it came in on, BIDI-03; DB-11: closed after the answer) and
    sends the bot's replies back over Prosody's stream: one TCP connection carries both
    directions."""
    mark, pmark = log_size(dialbackd.log), log_size(prosody_bidi.log)
    user, password = USERS[PROSODY_BIDI]
    run(_both_ways(f"{user}@{PROSODY_BIDI}", password, prosody_bidi.ip, dialbackd,
                   f"bidi-1 {mode}", user_first=True), 90)
    assert log_has(prosody_bidi.log, "Requesting bidirectional stream", pmark)
    assert log_has(dialbackd.log, "bidi negotiated (XEP-0288, inbound)", mark)
    assert log_has(dialbackd.log,
                   f"routing {COMPONENT}→{PROSODY_BIDI} over this stream (bidi)", mark)
    assert not log_has(dialbackd.log, f"s2s-out {COMPONENT}→{PROSODY_BIDI}", mark), \
        "dialbackd opened a stream of its own for the replies"
    wait_until(lambda: _between(prosody_bidi, dialbackd) == 1, 15,
               "exactly one TCP connection between Prosody and dialbackd")


def test_bidi_2_dialbackd_first_asks_for_bidi(prosody_bidi, dialbackd, mode):
    """BIDI-02 the other way: the bot writes first to dave@bidi2.test; dialbackd asks Prosody for
    bidi before its db:result and Prosody accepts it. Prosody checks our key over a stream of its
    own (mod_dialback routes db:verify through its outgoing table, where our stream is not yet
    authenticated), so this direction takes two connections; messages flow both ways."""
    mark, pmark = log_size(dialbackd.log), log_size(prosody_bidi.log)
    before = _between(prosody_bidi, dialbackd)
    user, password = USERS[PROSODY_BIDI2]
    run(_both_ways(f"{user}@{PROSODY_BIDI2}", password, prosody_bidi.ip, dialbackd,
                   f"bidi-2 {mode}", user_first=False), 90)
    assert log_has(dialbackd.log, "bidi negotiated (XEP-0288, outbound)", mark)
    assert log_has(prosody_bidi.log, "Requested bidirectional stream", pmark)
    wait_until(lambda: _between(prosody_bidi, dialbackd) == before + 2, 15,
               "one stream each way for bidi2.test")
