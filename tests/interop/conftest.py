"""Fixtures for the real-Prosody interop suite.

Everything runs on loopback addresses of 127.0.0.0/8 and is started with Popen, tracked by PID and
stopped by PID in a finalizer (also on failure, on SIGTERM/SIGINT and at interpreter exit):

    127.0.10.53:53    dnsmasq, answering ONLY for the `test.` zone (SRV + A records below)
    127.0.10.1        Prosody  prosody.test   (s2s 5269, c2s 5222; user alice/pass)
    127.0.10.2        Prosody  prosody2.test  (s2s 5269, c2s 5222; user bob/pass)  -- sanity only
    127.0.10.3        dialbackd dialback.test (s2s 5269, component 5347)
    127.0.10.4        Prosody  bidi.test + bidi2.test, with mod_s2s_bidi (XEP-0288; users carol,
                      dave/pass)  -- started by test_bidi.py only
    127.0.10.6        Prosody  secure.test, s2s_secure_auth = true  -- test_sasl.py only
    127.0.10.7        dialbackd sasl.test, verify = "pkix"  -- test_sasl.py only
                      + component.dialback.test (slixmpp ComponentXMPP, secret compsecret)
                      + irc.dialback.test (biboumi, secret ircsecret; started by its test only)

The suite runs every case in two modes ("plain": no TLS anywhere on s2s; "tls": STARTTLS required on
s2s on both sides, self-signed certificates, identity proven by dialback). The mode is a
session-scoped parametrized fixture, so pytest runs all plain cases, tears the servers down, then
all tls cases.

Environment:
    DIALBACKD_BIN      dialbackd binary (default target/debug/dialbackd, relative to the repo root)
    INTEROP_WORKDIR    keep configs/logs here instead of a pytest temp dir (must be empty)
    INTEROP_REQUIRE_DIALBACKD=1  fail (instead of skip) the dialbackd cases if the binary is missing
    INTEROP_IP_PREFIX  first three octets of the addresses (default 127.0.10)
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interop_lib import (  # noqa: E402
    COMPONENT, COMPONENT_SECRET, DIALBACK, IRC, IRC_SECRET, DIALBACKD_SECRET, IP_DIALBACKD, IP_DNS, IP_PROSODY,
    IP_PROSODY2, IP_PROSODY_BIDI, IP_SASLD, IP_SECURE, IPS, PROSODY, PROSODY2, PROSODY_BIDI,
    PROSODY_BIDI2, PROSODY_SECRETS, SASLD, SECURE, USERS, dns_query, tcp_open, wait_until)

REPO = Path(__file__).resolve().parents[2]

MODES = ["plain", "tls"]
LOG_TAIL = 60

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every child we start is recorded here (and as a pid file in the work dir,
# so run.sh can stop leftovers by PID if pytest itself is killed hard).

_LIVE: dict[int, "Proc"] = {}
_LOGS: dict[str, Path] = {}  # name -> log file, shown on failure
_PIDDIR: list[Path] = []


def _kill_all_live():
    for proc in list(_LIVE.values()):
        try:
            proc.stop(timeout=3)
        except Exception:  # pragma: no cover - best effort at exit
            pass


def _on_signal(signum, _frame):
    _kill_all_live()
    # Let pytest unwind (finalizers run; they find the processes already gone).
    raise KeyboardInterrupt(f"signal {signum}")


atexit.register(_kill_all_live)
signal.signal(signal.SIGTERM, _on_signal)


class Proc:
    """A child process, its log file, stopped by PID."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log
        _LOGS[name] = log
        self._logf = open(log, "ab")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        _LIVE[self.pid] = self
        if _PIDDIR:
            (_PIDDIR[0] / f"{name}.{self.pid}.pid").write_text(f"{self.pid}\n")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig=signal.SIGTERM) -> int:
        """Signal the process by PID, wait (bounded) for it, SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        _LIVE.pop(self.pid, None)
        if _PIDDIR:
            for p in _PIDDIR[0].glob(f"{self.name}.{self.pid}.pid"):
                p.unlink(missing_ok=True)
        self._logf.close()
        return self.popen.returncode

    def check_alive(self):
        if not self.alive():
            raise RuntimeError(f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}"
                               f"\n{tail(self.log)}")


# Start-up chatter that crowds out the interesting lines in a failure report.
_NOISE = ("\tcertmanager\t", "\tportmanager\t", "\tstats\t", "\tmodulemanager\t",
          "rustls::webpki::anchors")


def tail(path: Path, n: int = LOG_TAIL) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    lines = [ln for ln in lines if not any(x in ln for x in _NOISE)]
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------
# Work dir

@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    keep = os.environ.get("INTEROP_WORKDIR")
    if keep:
        d = Path(keep).resolve()
        if d.exists() and any(d.iterdir()):
            pytest.exit(f"INTEROP_WORKDIR={d} is not empty (give a new or empty directory)", 2)
        d.mkdir(parents=True, exist_ok=True)
    else:
        d = tmp_path_factory.mktemp("interop")
    (d / "pids").mkdir()
    _PIDDIR[:] = [d / "pids"]
    return d


def make_cert(directory: Path, domain: str, extra_names=()) -> tuple[Path, Path]:
    crt, key = directory / f"{domain}.crt", directory / f"{domain}.key"
    if not crt.exists():
        san = ",".join(f"DNS:{n}" for n in (domain, *extra_names))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "3", "-subj", f"/CN={domain}", "-addext", f"subjectAltName={san}",
             "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True, timeout=30)
    return crt, key


def make_ca(directory: Path) -> tuple[Path, Path]:
    """A test CA (EC P-256, 3 days): its certificate and key."""
    crt, key = directory / "ca.crt", directory / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "3", "-subj", "/CN=dialbackd interop test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=30)
    return crt, key


def make_ca_cert(directory: Path, ca: tuple[Path, Path], domain: str) -> tuple[Path, Path]:
    """A certificate for `domain` signed by the test CA `ca`: SAN dNSName, usable by TLS servers
    and clients (s2s streams present it in both roles)."""
    crt, key, csr = (directory / f"{domain}.crt", directory / f"{domain}.key",
                     directory / f"{domain}.csr")
    ext = directory / f"{domain}.ext"
    ext.write_text(f"subjectAltName=DNS:{domain}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", f"/CN={domain}", "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True, timeout=30)
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", "3", "-extfile", str(ext), "-out", str(crt)],
        check=True, capture_output=True, timeout=30)
    return crt, key


@pytest.fixture(scope="session")
def certs(workdir) -> dict:
    d = workdir / "certs"
    d.mkdir()
    return {
        PROSODY: make_cert(d, PROSODY),
        PROSODY2: make_cert(d, PROSODY2),
        DIALBACK: make_cert(d, DIALBACK, [COMPONENT, IRC]),
        PROSODY_BIDI: make_cert(d, PROSODY_BIDI, [PROSODY_BIDI2]),
    }


# ---------------------------------------------------------------------------------------------
# DNS: dnsmasq serving only the test zone

@pytest.fixture(scope="session")
def dns(workdir):
    d = workdir / "dns"
    d.mkdir()
    log = d / "dnsmasq.log"
    argv = [
        shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
        "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", "--bind-interfaces", f"--listen-address={IP_DNS}", "--port=53",
        "--except-interface=nonexistent0", "--user=root", "--group=root",
        f"--pid-file={d / 'dnsmasq.pid'}", "--log-queries", f"--log-facility={log}",
        "--local=/test/",  # authoritative-ish: unknown *.test names are NXDOMAIN, never forwarded
        f"--host-record={PROSODY},{IP_PROSODY}",
        f"--host-record={PROSODY2},{IP_PROSODY2}",
        f"--host-record={DIALBACK},{IP_DIALBACKD}",
        f"--host-record={PROSODY_BIDI},{IP_PROSODY_BIDI}",
        f"--host-record={PROSODY_BIDI2},{IP_PROSODY_BIDI}",
        f"--host-record={SECURE},{IP_SECURE}",
        f"--host-record={SASLD},{IP_SASLD}",
        f"--srv-host=_xmpp-server._tcp.{SECURE},{SECURE},5269",
        f"--srv-host=_xmpp-server._tcp.{SASLD},{SASLD},5269",
        f"--srv-host=_xmpp-server._tcp.{PROSODY},{PROSODY},5269",
        f"--srv-host=_xmpp-server._tcp.{PROSODY2},{PROSODY2},5269",
        f"--srv-host=_xmpp-server._tcp.{DIALBACK},{DIALBACK},5269",
        f"--srv-host=_xmpp-server._tcp.{COMPONENT},{DIALBACK},5269",
        f"--srv-host=_xmpp-server._tcp.{IRC},{DIALBACK},5269",
        f"--srv-host=_xmpp-server._tcp.{PROSODY_BIDI},{PROSODY_BIDI},5269",
        f"--srv-host=_xmpp-server._tcp.{PROSODY_BIDI2},{PROSODY_BIDI},5269",
    ]
    proc = Proc("dnsmasq", argv, d / "dnsmasq.stdout")
    _LOGS["dnsmasq-queries"] = log

    def answers():
        try:
            rcode, an, _ = dns_query(f"_xmpp-server._tcp.{PROSODY}", 33, timeout=0.3)
            return rcode == 0 and an >= 1
        except OSError:
            return False

    try:
        wait_until(answers, 10, "dnsmasq to answer", proc)
        resolv = d / "resolv.conf"
        resolv.write_text(f"nameserver {IP_DNS}\n")
        yield {"resolv": resolv, "proc": proc}
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------
# Prosody

PROSODY_CFG = """\
-- generated by tests/interop/conftest.py ({mode} mode)
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
plugin_paths = {{}}
interfaces = {{ "{ip}" }}
c2s_interfaces = {{ "{ip}" }}
s2s_interfaces = {{ "{ip}" }}
local_interfaces = {{ "{ip}" }}
c2s_ports = {{ 5222 }}
s2s_ports = {{ 5269 }}
use_ipv6 = false
modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping" }}
modules_disabled = {{ "offline" }}
authentication = "internal_hashed"
storage = "internal"
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{dir}/prosody.log" }} }}
dialback_secret = "{secret}"
s2s_secure_auth = false
s2s_require_encryption = {tls}
s2s_allow_encryption = {tls}
s2s_timeout = 20
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
unbound = {{
  resolvconf = "{resolv}";
  hoststxt = false;
  options = {{ ["local-zone"] = "test. transparent" }};
}}
certificates = "{certdir}"
ssl = {{ certificate = "{crt}"; key = "{key}"; }}
VirtualHost "{host}"
  ssl = {{ certificate = "{crt}"; key = "{key}"; }}
"""


class Prosody:
    def __init__(self, host: str, mode: str, workdir: Path, resolv: Path, crt: Path, key: Path):
        self.host, self.mode, self.ip = host, mode, IPS[host]
        self.dir = workdir / f"{host}-{mode}"
        (self.dir / "data").mkdir(parents=True)
        self.cfg = self.dir / "prosody.cfg.lua"
        self.log = self.dir / "prosody.log"
        self.cfg.write_text(PROSODY_CFG.format(
            mode=mode, dir=self.dir, ip=self.ip, secret=PROSODY_SECRETS[host],
            tls="true" if mode == "tls" else "false", resolv=resolv, crt=crt, key=key, host=host,
            certdir=crt.parent))
        user, password = USERS[host]
        self.user_jid, self.password = f"{user}@{host}", password
        subprocess.run(["prosodyctl", "--config", str(self.cfg), "register", user, host, password],
                       check=True, capture_output=True, timeout=30)
        self.proc = None

    def start(self):
        self.proc = Proc(self.host, ["prosody", "-F", "--config", self.cfg], self.dir / "stdout.log")
        _LOGS[self.host] = self.log
        wait_until(lambda: tcp_open(self.ip, 5222) and tcp_open(self.ip, 5269), 20,
                   f"{self.host} to listen", self.proc)

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=10)


def _guard_ports_free(ip: str, ports=(5269, 5222)):
    """A system Prosody (started by apt) listening on *:5269 would shadow ours."""
    for port in ports:
        if tcp_open(ip, port):
            pytest.fail(f"something already listens on {ip}:{port} (a system prosody/ejabberd "
                        f"started by apt? stop it: /etc/init.d/prosody stop)")


@pytest.fixture(scope="session", params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def prosody(mode, workdir, dns, certs):
    _guard_ports_free(IP_PROSODY)
    p = Prosody(PROSODY, mode, workdir, dns["resolv"], *certs[PROSODY])
    try:
        p.start()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="session")
def prosody2(mode, workdir, dns, certs):
    _guard_ports_free(IP_PROSODY2)
    p = Prosody(PROSODY2, mode, workdir, dns["resolv"], *certs[PROSODY2])
    try:
        p.start()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="session")
def prosody_bidi(mode, workdir, dns, certs):
    """bidi.test with mod_s2s_bidi (XEP-0288; Debian's Prosody 0.12 ships it) and a second
    VirtualHost bidi2.test (user dave), on their own address; the other Prosodys stay without
    bidi."""
    _guard_ports_free(IP_PROSODY_BIDI)
    crt, key = certs[PROSODY_BIDI]
    p = Prosody(PROSODY_BIDI, mode, workdir, dns["resolv"], crt, key)
    text = p.cfg.read_text()
    plain = '"disco", "ping" }'
    assert plain in text, "the Prosody template's modules_enabled changed"
    text = text.replace(plain, '"disco", "ping", "s2s_bidi" }')
    text += f'VirtualHost "{PROSODY_BIDI2}"\n  ssl = {{ certificate = "{crt}"; key = "{key}"; }}\n'
    p.cfg.write_text(text)
    user, password = USERS[PROSODY_BIDI2]
    subprocess.run(["prosodyctl", "--config", str(p.cfg), "register", user, PROSODY_BIDI2,
                    password], check=True, capture_output=True, timeout=30)
    try:
        p.start()
        yield p
    finally:
        p.stop()


# ---------------------------------------------------------------------------------------------
# dialbackd

def dialbackd_bin() -> Path:
    p = Path(os.environ.get("DIALBACKD_BIN", "target/debug/dialbackd"))
    return p if p.is_absolute() else REPO / p


DIALBACKD_CFG = """\
# generated by tests/interop/conftest.py ({mode} mode)
domains = ["{dialback}"]
dialback_secret = "{secret}"

[listen]
s2s = ["{ip}:5269"]
component = "{ip}:5347"

[[component]]
domain = "{component}"
secret = "{csecret}"

[[component]]
domain = "{irc}"
secret = "{irc_secret}"

[dns]
nameservers = ["{dns}:53"]
# Prosody lives on 127.0.10.x (see the top of this file): opt in to dialling loopback, which
# the private-network guard refuses by default.
allow_networks = ["127.0.0.0/8"]

[timeouts]
negotiation = 20
dialback = 15
"""

DIALBACKD_TLS = """
[tls]
certificate = "{crt}"
key = "{key}"
require_encryption = true
"""


class Dialbackd:
    def __init__(self, mode: str, workdir: Path, crt: Path, key: Path):
        self.mode, self.ip = mode, IP_DIALBACKD
        self.bin = dialbackd_bin()
        self.dir = workdir / f"dialbackd-{mode}"
        self.dir.mkdir()
        self.cfg = self.dir / "dialbackd.toml"
        self.log = self.dir / "dialbackd.log"
        text = DIALBACKD_CFG.format(mode=mode, dialback=DIALBACK, secret=DIALBACKD_SECRET,
                                    ip=self.ip, component=COMPONENT, csecret=COMPONENT_SECRET,
                                    irc=IRC, irc_secret=IRC_SECRET, dns=IP_DNS)
        if mode == "tls":
            text += DIALBACKD_TLS.format(crt=crt, key=key)
        self.cfg.write_text(text)
        self.proc = None
        self.starts = 0

    def _listening(self) -> bool:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_offset)
                return b"listening" in f.read()
        except FileNotFoundError:
            return False

    def start(self, timeout: float = 20):
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.starts += 1
        with open(self.log, "ab") as f:
            f.write(f"===== interop harness: start #{self.starts} =====\n".encode())
        self.proc = Proc("dialbackd", [self.bin, "--config", self.cfg], self.log,
                         env={"RUST_LOG": os.environ.get("RUST_LOG", "debug")})
        wait_until(self._listening, timeout, "dialbackd to log 'listening'", self.proc)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.stop(timeout=timeout)
        self.proc = None
        return rc


@pytest.fixture(scope="session")
def dialbackd(mode, workdir, dns, prosody, certs):
    b = dialbackd_bin()
    if not (b.is_file() and os.access(b, os.X_OK)):
        if os.environ.get("INTEROP_REQUIRE_DIALBACKD") == "1":
            pytest.fail(f"dialbackd binary not found at {b} (INTEROP_REQUIRE_DIALBACKD=1)")
        pytest.skip(f"dialbackd binary not found at {b} (build it, or set DIALBACKD_BIN)")
    _guard_ports_free(IP_DIALBACKD, (5269, 5347))
    d = Dialbackd(mode, workdir, *certs[DIALBACK])
    chk = subprocess.run([str(b), "--check-config", str(d.cfg)], capture_output=True, text=True,
                         timeout=10)
    if chk.returncode != 0:
        pytest.fail(f"dialbackd --check-config rejected the harness config:\n{chk.stdout}"
                    f"{chk.stderr}\n{d.cfg.read_text()}")
    try:
        d.start()
        yield d
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------
# biboumi: Debian's XMPP-to-IRC gateway, an XEP-0114 component of dialbackd (no IRC server needed
# to answer service discovery on its own JID).

BIBOUMI_CFG = """\
# generated by tests/interop/conftest.py ({mode} mode)
hostname={irc}
password={secret}
xmpp_server_ip={ip}
port=5347
identd_port=0
db_name={dir}/biboumi.sqlite
policy_directory={dir}
log_file={dir}/biboumi.log
log_level=0
"""


@pytest.fixture
def biboumi(mode, workdir, dialbackd):
    """biboumi connected to dialbackd as irc.dialback.test; stopped by PID afterwards."""
    exe = shutil.which("biboumi") or "/usr/bin/biboumi"
    d = workdir / f"biboumi-{mode}"
    d.mkdir()
    cfg = d / "biboumi.cfg"
    cfg.write_text(BIBOUMI_CFG.format(mode=mode, irc=IRC, secret=IRC_SECRET, ip=dialbackd.ip,
                                      dir=d))
    offset = dialbackd.log.stat().st_size
    proc = Proc("biboumi", [exe, cfg], d / "stdout.log", cwd=d)
    _LOGS["biboumi"] = d / "biboumi.log"

    def connected() -> bool:
        with open(dialbackd.log, "rb") as f:
            f.seek(offset)
            return f"component {IRC} connected".encode() in f.read()

    try:
        wait_until(connected, 20, f"biboumi to connect to dialbackd as {IRC}", proc)
        yield proc
    finally:
        proc.stop(timeout=10)


# ---------------------------------------------------------------------------------------------
# Show the servers' logs when a case fails.

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for name, path in list(_LOGS.items()):
            if name == "dnsmasq":
                continue
            rep.sections.append((f"last {LOG_TAIL} lines of {name} ({path})", tail(path)))
