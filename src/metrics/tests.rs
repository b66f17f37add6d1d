//! The OpenMetrics text: checked against the format's rules by a small validator, and the
//! counters and gauges checked to land on their series.

use super::*;
use std::collections::{HashMap, HashSet};

/// Label names and (unescaped) values.
type Labels = Vec<(String, String)>;

/// One sample line: metric name, labels, value.
type Sample = (String, Labels, f64);

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// An OpenMetrics `escaped-string` at the start of `r`, unescaped, and where the `"` that ends
/// it is (`None`: it runs to the end of `r`).
fn unescape(r: &str) -> Result<(String, Option<usize>), String> {
    let mut value = String::new();
    let mut chars = r.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, Some(i))),
            '\\' => match chars.next().ok_or("dangling escape")?.1 {
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'n' => value.push('\n'),
                '\n' => return Err("escaped raw newline".into()),
                other => value.push(other),
            },
            '\n' => return Err("raw newline".into()),
            c => value.push(c),
        }
    }
    Ok((value, None))
}

/// The labels after a `{`, undoing their escapes; and what follows the `}`.
fn parse_labels(mut r: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        if let Some(rest) = r.strip_prefix('}') {
            return Ok((labels, rest));
        }
        if !labels.is_empty() {
            r = r.strip_prefix(',').ok_or("expected ','")?;
        }
        let eq = r.find('=').ok_or("label without '='")?;
        let key = &r[..eq];
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        r = r[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let (value, end) = unescape(r)?;
        let end = end.ok_or("unterminated label value")?;
        r = &r[end + 1..];
        labels.push((key.to_string(), value));
    }
}

/// Parse `name{k="v",…} value`; `Err` says what is wrong.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(r) => parse_labels(r)?,
        None => (Vec::new(), &line[name_end..]),
    };
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    Ok((name.to_string(), labels, value))
}

/// Check `text` against OpenMetrics 1.0 as far as this exposition uses it; returns the samples.
fn validate(text: &str) -> Vec<Sample> {
    assert!(
        text.ends_with("# EOF\n"),
        "must end with # EOF and a newline"
    );
    let body = &text[..text.len() - "# EOF\n".len()];
    assert!(!body.contains("# EOF"), "one # EOF, at the end");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current = String::new();
    let mut seen_series = HashSet::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        assert!(!line.is_empty(), "no blank lines");
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name), Some(rest)) = (kind, name, rest) else {
                panic!("malformed metadata line {line:?}");
            };
            assert!(valid_name(name), "{line}");
            if name != current {
                assert!(!done.contains(name), "family {name} interleaved");
                done.insert(std::mem::replace(&mut current, name.to_string()));
            }
            match kind {
                "TYPE" => {
                    assert!(["counter", "gauge", "info"].contains(&rest), "{line}");
                    assert!(
                        types.insert(name.into(), rest.into()).is_none(),
                        "TYPE twice for {name}"
                    );
                }
                "HELP" => {
                    let help = unescape(rest).unwrap_or_else(|e| panic!("{e}: {line:?}"));
                    assert_eq!(help.1, None, "raw '\"' in {line:?}");
                }
                "UNIT" => assert!(name.ends_with(&format!("_{rest}")), "{line}"),
                _ => panic!("unknown metadata {line:?}"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let t = types
            .get(&current)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        let suffix = name.strip_prefix(current.as_str()).unwrap_or("?");
        let ok = match t.as_str() {
            "counter" => suffix == "_total" && value >= 0.0,
            "gauge" => suffix.is_empty(),
            "info" => suffix == "_info" && value == 1.0,
            _ => false,
        };
        assert!(ok, "{name} does not belong to {t} family {current}");
        let mut key: Vec<_> = labels.clone();
        key.sort();
        assert!(
            seen_series.insert((name.clone(), key)),
            "duplicate series {line}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn the_exposition_is_valid_openmetrics_ending_with_eof() {
    let text = render(&Gauges::default());
    let samples = validate(&text);
    // Bounded label sets, every series present (zeros included).
    let count = |name: &str| samples.iter().filter(|s| s.0 == name).count();
    assert_eq!(count("dialbackd_streams"), 4 * 3);
    assert_eq!(
        count("dialbackd_stanzas_bounced_total"),
        StanzaCondition::ALL.len()
    );
    assert_eq!(count("dialbackd_caps_hit_total"), Cap::ALL.len());
    assert_eq!(count("dialbackd_dialback_verifications_total"), 3 * 3);
    assert_eq!(count("dialbackd_tls_handshakes_total"), 2);
    assert_eq!(count("dialbackd_sasl_external_total"), 2 * 2);
    assert_eq!(count("dialbackd_bidi_streams_total"), 2);
    assert_eq!(
        value(
            &samples,
            "dialbackd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(text.contains("# UNIT dialbackd_start_time_seconds seconds\n"));
}

#[test]
fn the_validator_refuses_what_the_format_forbids() {
    // The checks above can fail: a few broken expositions.
    for bad in [
        "x_total 1\n# EOF\n",                                   // sample before its TYPE
        "# TYPE x counter\n# HELP x h\nx 1\n# EOF\n",           // counter without _total
        "# TYPE x gauge\n# HELP x h\nx 1\n",                    // no # EOF
        "# TYPE x gauge\n# HELP x h\nx{a=\"b\"c\"} 1\n# EOF\n", // raw quote in a value
        "# TYPE x gauge\n# HELP x h\nx 1\nx 2\n# EOF\n",        // duplicate series
        "# TYPE x gauge\n# HELP x a \"quote\"\nx 1\n# EOF\n",   // raw quote in HELP
    ] {
        let r = std::panic::catch_unwind(|| validate(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn label_values_and_help_are_escaped() {
    assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    let mut x = Exposition::new();
    x.family(
        "t_weird",
        Type::Gauge,
        "help with \\, \"quotes\" and\nnewline",
    );
    let nasty = "quote\" back\\slash new\nline";
    x.sample(&[("v", nasty)], 7);
    let text = x.finish();
    assert!(
        text.contains("# HELP t_weird help with \\\\, \\\"quotes\\\" and\\nnewline\n"),
        "{text}"
    );
    let samples = validate(&text);
    assert_eq!(samples[0].1, vec![("v".to_string(), nasty.to_string())]);
    assert_eq!(samples[0].2, 7.0);
}

#[test]
fn counters_land_on_their_series() {
    let m = Metrics::new();
    m.routed(Destination::Remote);
    m.routed(Destination::Remote);
    m.routed(Destination::Local);
    m.bounced(StanzaCondition::RemoteServerNotFound);
    m.dialback(Role::Receiving, &Verdict::Valid);
    m.dialback(Role::Authoritative, &Verdict::Invalid);
    m.dialback(
        Role::Initiating,
        &Verdict::Error(StanzaCondition::ItemNotFound),
    );
    m.tls_handshake(Side::Client);
    m.tls_failure(Side::Server);
    m.cap_hit(Cap::ConnectionsPerIp);
    let s = validate(&render_from(&m, &Gauges::default()));
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(
        v(
            "dialbackd_stanzas_routed_total",
            &[("destination", "remote")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "dialbackd_stanzas_routed_total",
            &[("destination", "local")]
        ),
        1.0
    );
    let bounced = "dialbackd_stanzas_bounced_total";
    assert_eq!(v(bounced, &[("condition", "remote-server-not-found")]), 1.0);
    assert_eq!(v(bounced, &[("condition", "remote-server-timeout")]), 0.0);
    let db = "dialbackd_dialback_verifications_total";
    assert_eq!(v(db, &[("role", "receiving"), ("outcome", "valid")]), 1.0);
    assert_eq!(
        v(db, &[("role", "authoritative"), ("outcome", "invalid")]),
        1.0
    );
    assert_eq!(v(db, &[("role", "initiating"), ("outcome", "error")]), 1.0);
    assert_eq!(v(db, &[("role", "receiving"), ("outcome", "invalid")]), 0.0);
    assert_eq!(
        v("dialbackd_tls_handshakes_total", &[("side", "client")]),
        1.0
    );
    assert_eq!(
        v("dialbackd_tls_failures_total", &[("side", "server")]),
        1.0
    );
    assert_eq!(
        v("dialbackd_caps_hit_total", &[("cap", "connections_per_ip")]),
        1.0
    );
    assert_eq!(
        v("dialbackd_caps_hit_total", &[("cap", "connections")]),
        0.0
    );
}

#[test]
fn sasl_external_and_bidi_counters_land_on_their_series() {
    // SASL-01: how peers authenticated by EXTERNAL, both ways; BIDI-02: bidi streams.
    let m = Metrics::new();
    m.sasl_external(Way::Inbound, true);
    m.sasl_external(Way::Inbound, true);
    m.sasl_external(Way::Inbound, false);
    m.sasl_external(Way::Outbound, false);
    m.bidi(Way::Outbound);
    let s = validate(&render_from(&m, &Gauges::default()));
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    let sasl = "dialbackd_sasl_external_total";
    let cases = [
        ("inbound", "success", 2.0),
        ("inbound", "failure", 1.0),
        ("outbound", "success", 0.0),
        ("outbound", "failure", 1.0),
    ];
    for (direction, outcome, n) in cases {
        let labels = [("direction", direction), ("outcome", outcome)];
        assert_eq!(v(sasl, &labels), n, "{labels:?}");
    }
    let bidi = "dialbackd_bidi_streams_total";
    assert_eq!(v(bidi, &[("direction", "outbound")]), 1.0);
    assert_eq!(v(bidi, &[("direction", "inbound")]), 0.0);
}

#[test]
fn gauges_land_on_their_series() {
    let mut g = Gauges {
        inbox_stanzas: 5,
        queued_bytes: 1234,
        dns: CacheStats {
            hits: 3,
            queries: 4,
            coalesced: 1,
            failures: 2,
            entries: 6,
        },
        ..Gauges::default()
    };
    g.count_stream(Direction::S2sIn, StreamState::Open);
    g.count_stream(Direction::S2sIn, StreamState::Open);
    g.count_stream(Direction::Verify, StreamState::Negotiating);
    let s = validate(&render_from(&Metrics::new(), &g));
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    let streams = "dialbackd_streams";
    assert_eq!(
        v(streams, &[("direction", "s2s_in"), ("state", "open")]),
        2.0
    );
    assert_eq!(
        v(
            streams,
            &[("direction", "verify"), ("state", "negotiating")]
        ),
        1.0
    );
    assert_eq!(
        v(streams, &[("direction", "s2s_out"), ("state", "open")]),
        0.0
    );
    assert_eq!(v("dialbackd_inbox_stanzas", &[]), 5.0);
    assert_eq!(v("dialbackd_queued_bytes", &[]), 1234.0);
    assert_eq!(v("dialbackd_dns_lookups_total", &[]), 8.0);
    assert_eq!(v("dialbackd_dns_cache_hits_total", &[]), 3.0);
    assert_eq!(v("dialbackd_dns_failures_total", &[]), 2.0);
    assert_eq!(v("dialbackd_dns_cache_entries", &[]), 6.0);
}

#[test]
fn enum_indexes_match_their_lists() {
    // The counters are indexed by `as usize`: it must be each variant's place in ALL.
    for (i, c) in StanzaCondition::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{c}");
    }
    for (i, c) in Cap::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{}", c.as_str());
    }
    let names: HashSet<_> = Cap::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), Cap::ALL.len(), "cap names are distinct");
}
