"""XMPP actors for the interop suite: slixmpp clients/components and a raw s2s stream.

All waits are bounded. Each test runs its scenario with `run(coro, timeout)`, which creates a
fresh asyncio loop (slixmpp objects must be created inside it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import socket
import ssl
import struct
import time
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout  # noqa: F401  (re-exported for tests)

log = logging.getLogger("interop")

# Topology (see conftest.py).
PREFIX = os.environ.get("INTEROP_IP_PREFIX", "127.0.10")
IP_PROSODY = f"{PREFIX}.1"
IP_PROSODY2 = f"{PREFIX}.2"
IP_DIALBACKD = f"{PREFIX}.3"
IP_PROSODY_BIDI = f"{PREFIX}.4"
IP_DNS = f"{PREFIX}.53"
# SASL EXTERNAL cases (test_sasl.py): a Prosody with s2s_secure_auth and a dialbackd, both with
# certificates from a test CA.
IP_SECURE = f"{PREFIX}.6"
IP_SASLD = f"{PREFIX}.7"

PROSODY = "prosody.test"
PROSODY2 = "prosody2.test"
DIALBACK = "dialback.test"
# A Prosody with mod_s2s_bidi (XEP-0288) hosting two domains; started by test_bidi.py only.
PROSODY_BIDI = "bidi.test"
PROSODY_BIDI2 = "bidi2.test"
COMPONENT = "component.dialback.test"
COMPONENT_SECRET = "compsecret"
# biboumi (XMPP-to-IRC gateway), a second component of dialbackd.
IRC = "irc.dialback.test"
IRC_SECRET = "ircsecret"
DIALBACKD_SECRET = "interop-secret"
SECURE = "secure.test"
SASLD = "sasl.test"
PROSODY_SECRETS = {PROSODY: "prosody-interop-secret", PROSODY2: "prosody2-interop-secret",
                   PROSODY_BIDI: "bidi-interop-secret", SECURE: "secure-interop-secret"}
USERS = {PROSODY: ("alice", "pass"), PROSODY2: ("bob", "pass"), PROSODY_BIDI: ("carol", "pass"),
         PROSODY_BIDI2: ("dave", "pass"), SECURE: ("carol", "pass")}
IPS = {PROSODY: IP_PROSODY, PROSODY2: IP_PROSODY2, PROSODY_BIDI: IP_PROSODY_BIDI,
       SECURE: IP_SECURE}


def wait_until(cond, timeout: float, what: str, proc=None, step: float = 0.05):
    """Poll `cond` until true; bounded; fails early if `proc` died."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if proc is not None:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def tcp_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Oracles

def xep0185_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 / Prosody / dialbackd: hex(HMAC-SHA256(hex(SHA256(secret)), 'recv orig id'))."""
    k = hashlib.sha256(secret.encode()).hexdigest().encode()
    return hmac.new(k, f"{receiving} {originating} {stream_id}".encode(), hashlib.sha256).hexdigest()


def dns_query(name: str, qtype: int, server=(IP_DNS, 53), timeout=1.0):
    """Minimal DNS client: returns (rcode, ancount, raw answer bytes)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, server)
        data, _ = s.recvfrom(4096)
    rid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
    assert rid == qid
    return flags & 0xF, an, data



NS_STREAM = "http://etherx.jabber.org/streams"
NS_SERVER = "jabber:server"
NS_DB = "jabber:server:dialback"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


def run(coro, timeout: float):
    """Run one scenario on a fresh event loop, bounded by `timeout` seconds."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def _no_verify(ctx: ssl.SSLContext):
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE


class NotReceived(AssertionError):
    """No stanza matching the predicate arrived in time."""


class Inbox:
    """Collects stanzas; `get(pred, timeout)` waits (bounded) for one matching `pred`."""

    def __init__(self, owner: str = "?"):
        self.owner = owner
        self.items: list = []
        self.cond = asyncio.Condition()

    def put(self, item):
        self.items.append(item)

        async def notify():
            async with self.cond:
                self.cond.notify_all()
        asyncio.ensure_future(notify())

    async def get(self, pred=lambda s: True, timeout: float = 10.0):
        async def find():
            async with self.cond:
                while True:
                    for i, it in enumerate(self.items):
                        if pred(it):
                            return self.items.pop(i)
                    await self.cond.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            others = "".join(f"\n  {it}" for it in self.items) or " none"
            raise NotReceived(f"{self.owner}: no matching stanza within {timeout}s; "
                              f"other stanzas received:{others}") from None

    async def expect_nothing(self, pred=lambda s: True, within: float = 5.0):
        try:
            got = await self.get(pred, within)
        except NotReceived:
            return
        raise AssertionError(f"unexpected stanza delivered: {got}")


class _Connected:
    """Mixin: bounded connect, inbox for messages (normal and error)."""

    def _setup_common(self):
        self.inbox = Inbox(str(self.boundjid))
        self.started = asyncio.Event()
        self.failed: list[str] = []
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("message", self.inbox.put)
        self.add_event_handler("message_error", self.inbox.put)
        for ev in ("failed_auth", "connection_failed", "stream_error"):
            self.add_event_handler(ev, lambda e, ev=ev: (self.failed.append(f"{ev}: {e}"),
                                                         self.started.set()))

    async def _on_start(self, _event):
        self.started.set()

    async def wait_started(self, timeout: float):
        try:
            await asyncio.wait_for(self.started.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid} did not start a session within {timeout}s")
        if self.failed:
            raise AssertionError(f"{self.boundjid}: {self.failed}")

    async def close(self, timeout: float = 3.0):
        try:
            self.disconnect(wait=0.5)
            await asyncio.wait_for(self.disconnected, timeout)
        except Exception:
            self.abort()


class Client(_Connected, slixmpp.ClientXMPP):
    """A c2s user of a Prosody instance (TLS to Prosody, no certificate check)."""

    def __init__(self, jid: str, password: str, ip: str):
        slixmpp.ClientXMPP.__init__(self, jid, password)
        self.ip = ip
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        _no_verify(self.ssl_context)
        self._setup_common()

    async def _on_start(self, _event):
        self.send_presence()
        self.started.set()

    async def start(self, timeout: float = 15.0):
        self.connect(address=(self.ip, 5222))
        await self.wait_started(timeout)
        return self


class Component(_Connected, slixmpp.ComponentXMPP):
    """An XEP-0114 external component connected to dialbackd."""

    def __init__(self, jid: str, secret: str, ip: str, port: int = 5347):
        slixmpp.ComponentXMPP.__init__(self, jid, secret, ip, port)
        self._setup_common()

    async def start(self, timeout: float = 15.0):
        self.connect()
        await self.wait_started(timeout)
        return self


def is_error(stanza, condition: str | None = None) -> bool:
    if stanza["type"] != "error":
        return False
    return condition is None or stanza["error"]["condition"] == condition


# ---------------------------------------------------------------------------------------------
# Raw s2s stream (for spoofing and for the Prosody key oracle). Blocking sockets with timeouts.

class RawStream:
    """A hand-driven server-to-server stream: header, features, STARTTLS, dialback elements.

    `next(timeout)` returns the next top-level element (ElementTree) or None when the peer closed
    the stream/socket. Stream headers are parsed with XMLPullParser (restarted after STARTTLS).
    """

    def __init__(self, ip: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((ip, port), timeout=timeout)
        self.closed = False
        self.header = None
        self._new_parser()

    def _new_parser(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.pending: list = []

    def send(self, text: str):
        log.debug("raw >> %s", text)
        self.sock.sendall(text.encode())

    def open(self, frm: str, to: str, db: bool = True):
        self.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                  "xmlns:stream='http://etherx.jabber.org/streams' "
                  + ("xmlns:db='jabber:server:dialback' " if db else "")
                  + f"from='{frm}' to='{to}' version='1.0'>")

    def _feed(self, data: bytes):
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                self.depth += 1
                if self.depth == 1:
                    self.header = el
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.pending.append(el)
                elif self.depth == 0:
                    self.closed = True

    def next(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not self.pending:
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no element from peer within {timeout}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            except socket.timeout:
                continue
            if not data:
                self.closed = True
                return None
            log.debug("raw << %r", data)
            self._feed(data)
        return self.pending.pop(0)

    def expect(self, tag: str, timeout: float = 10.0):
        el = self.next(timeout)
        assert el is not None and el.tag == tag, f"expected {tag}, got {describe(el)}"
        return el

    def starttls(self, timeout: float = 10.0):
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        el = self.next(timeout)
        assert el is not None and el.tag == f"{{{NS_TLS}}}proceed", \
            f"expected <proceed/>, got {describe(el)}"
        ctx = ssl.create_default_context()
        _no_verify(ctx)
        self.sock.settimeout(timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=None)
        self._new_parser()

    def close(self):
        try:
            if not self.closed:
                self.send("</stream:stream>")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def describe(el) -> str:
    if el is None:
        return "end of stream"
    return ET.tostring(el, encoding="unicode")


def stream_error(el) -> str | None:
    """Condition name if `el` is a <stream:error/>."""
    if el is None or el.tag != f"{{{NS_STREAM}}}error":
        return None
    for child in el:
        if child.tag.startswith(f"{{{NS_STREAMS_ERR}}}") and not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return "?"


def error_condition(el) -> str | None:
    """Defined condition inside an <error/> child (dialback or stanza error)."""
    for err in el.iter():
        if err.tag.endswith("}error") and err is not el:
            for child in err:
                if child.tag.startswith(f"{{{NS_STANZAS}}}") and not child.tag.endswith("}text"):
                    return child.tag.split("}")[1]
    return None
