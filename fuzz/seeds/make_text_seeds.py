#!/usr/bin/env python3
"""Builds the committed seed corpora of the XML and config targets (run once; the output is
committed under fuzz/corpus/). XML seeds: each direction of each connection in the captured
transcripts (../shared/reference/transcripts, lines '+ <time> cN A -> B <bytes>'; TLS records
and TCP flags skipped), plus hand-written streams for what the transcripts lack. Config seeds:
the example configurations and variants. Usage: make_text_seeds.py TRANSCRIPT_DIR REPO_ROOT."""
import os, re, sys, hashlib

tdir, root = sys.argv[1], sys.argv[2]
out = os.path.join(root, "fuzz", "corpus")
line_re = re.compile(r"^\+\s+[0-9.]+s\s+(c\d+)\s+(\S+) -> (\S+) (.*)$")

def put(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

streams = {}
for fn in sorted(os.listdir(tdir)):
    if not fn.startswith("transcript-"):
        continue
    for line in open(os.path.join(tdir, fn), encoding="utf-8"):
        m = line_re.match(line.rstrip("\n"))
        if not m:
            continue
        conn, src, dst, payload = m.groups()
        if payload.startswith("[") or not payload.startswith("<"):
            continue  # TCP flags, TLS records
        streams.setdefault((fn, conn, src, dst), []).append(payload)

xml_seeds = []
for key, parts in streams.items():
    data = "".join(parts).encode()
    if len(data) <= 4096:
        xml_seeds.append(data)

HDR = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
       "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
       "from='b.test' to='a.test' version='1.0'>")
bodies = [
    "<db:result from='b.test' to='a.test'>0123456789abcdef</db:result>",
    "<db:verify from='b.test' to='a.test' id='id1'>0123456789abcdef</db:verify>",
    "<db:result from='a.test' to='b.test' type='error'><error type='cancel'>"
    "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
    "<message from='u@b.test' to='v@a.test' type='chat' id='m1' xml:lang='en'>"
    "<body>Hi &amp; &lt;bye&gt; &apos;x&apos; &quot;y&quot; &#65;&#x42;</body>"
    "<x xmlns='urn:x' xmlns:p='urn:p' p:a='1'><y>t<![CDATA[<raw> & ]]>u</y></x></message>",
    "<iq type='get' id='p' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<message from='u@b.test' to='c@echo.a.test'><x xmlns='jabber:server:dialback'/>"
    "<db:y/><stream:z/></message>",
    "<presence xmlns='jabber:client' from='u@b.test/r' to='v@a.test'>\r\n\t<status>a\rb</status></presence>",
    "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
    "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>bad&#10;line</text></stream:error>",
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    " \n <message to='a@a.test' from='b@b.test'/></stream:stream>",
    "<a><b><c><d><e><f><g><h/></g></f></e></d></c></b></a>",
    "<!-- c --><message/>",
    "<!DOCTYPE x><message/>",
    "<?pi x?><message/>",
    "<message a='1' a='2'/>",
    "<p:message xmlns:p='jabber:server' q:x='1'/>",
    "<message xmlns:p='urn:p' xmlns:q='urn:p' p:x='1' q:x='2'/>",
    "<xml:lang/><message xml:space='preserve'/>",
    "<message>&unknown;</message>",
    "<message>\xc3\x28</message>",
]
for b in bodies:
    xml_seeds.append((HDR + b).encode("utf-8", "surrogateescape"))
    xml_seeds.append(b.encode("utf-8", "surrogateescape"))
xml_seeds.append(("<?xml version='1.0' encoding='ISO-8859-1'?>" + HDR[21:]).encode())
xml_seeds.append(("<stream:stream xmlns='jabber:component:accept' xmlns:stream="
                  "'http://etherx.jabber.org/streams' to='echo.a.test'>"
                  "<handshake>aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d</handshake>"
                  "<message from='bot@echo.a.test' to='u@b.test'><body>x</body></message>"
                  "</stream:stream>").encode())

for i, s in enumerate(xml_seeds):
    put("xml_reader", s)
    put("serializer_roundtrip", s)
    # xml_chunked: count byte (bit 7: small limits), chunk sizes, stream.
    put("xml_chunked", (bytes([2, 1, 7, 200]) if i % 2 else bytes([0x80, 3])) + s)

configs = [open(os.path.join(root, "etc", f), "rb").read() for f in ("dialbackd.toml", "peer.toml")]
configs += [
    b'domains = ["a.test"]\n',
    b'domains = ["a.test", "b.test"]\ndialback_secret = "0123456789abcdef"\n'
    b'[listen]\ns2s = ["127.0.0.1:5269", "[::1]:5269"]\ncomponent = "127.0.0.1:5347"\n'
    b'[[component]]\ndomain = "echo.a.test"\nsecret = "s"\n'
    b'[dns]\nnameservers = ["127.0.0.1:53"]\n[routes]\n"c.test" = "127.0.0.1:5270"\n'
    b'[timeouts]\nidle = 10\nkeepalive = 5\n[limits]\nstanza_size = 10000\ndepth = 8\nqueue = 1\n',
    b'domains = ["a.test"]\n[tls]\nenabled = true\nrequire_encryption = true\nverify = "pkix"\n'
    b'certificate = "a.pem"\nkey = "a.key"\n[tls.peers."b.test"]\nverify = "pin"\n'
    b'fingerprints = ["sha256:' + b"00" * 32 + b'"]\n',
    b'domains = ["a.test", "A.TEST."]\n',
    b'domains = []\n[limits]\ndepth = -1\n',
    b'domains = ["a.test"]\n[[component]]\ndomain = "a.test"\nsecret = ""\n',
]
for c in configs:
    put("config", c)
print({t: len(os.listdir(os.path.join(out, t))) for t in os.listdir(out)})
