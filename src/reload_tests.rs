//! Reloading against real files: what is put in force, what keeps its running value, and a
//! configuration that fails leaving the one in force untouched.

use super::*;
use crate::domain::Domain;
use crate::keys::DialbackSecret;
use crate::xml::{Element, STANZAS_NS};
use std::path::PathBuf;

/// A directory of configuration files and certificates, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-reload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("dialbackd.toml")
    }

    /// Write the configuration file: `domains = ["a.test"]`, `more`, a listener and a
    /// nameserver.
    fn write(&self, more: &str) {
        let text = format!(
            "domains = [\"a.test\"]\n{more}\n[listen]\ns2s = [\"127.0.0.1:5269\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n"
        );
        std::fs::write(self.file(), text).unwrap();
    }

    /// A self-signed certificate for a.test in a subdirectory `sub`; the `[tls]` lines naming it.
    fn cert(&self, sub: &str) -> String {
        let (c, k) =
            crate::tls::gen_cert(&Domain::parse("a.test").unwrap(), &self.0.join(sub)).unwrap();
        format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        )
    }

    /// A router started from the file, as start-up builds it.
    fn router(&self) -> Arc<Router> {
        let config = Config::load(&self.file()).unwrap();
        let tls = load_tls(&config).unwrap();
        let ctx = Arc::new(Ctx {
            tls_available: tls.is_some(),
            secret: DialbackSecret::random().unwrap(),
            config: Arc::new(config),
        });
        let resolver = resolver(&ctx.config).unwrap();
        Router::new(ctx, resolver, tls)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse(text: &str) -> Config {
    Config::parse(
        &format!("domains = [\"a.test\"]\n{text}"),
        Path::new("t.toml"),
    )
    .unwrap()
}

#[test]
fn what_needs_a_restart_keeps_its_running_value_and_is_named() {
    let old = parse(
        "dialback_secret = \"one\"\n[listen]\ns2s = [\"127.0.0.1:5269\"]\n[dns]\ncache_entries = 100\n",
    );
    let mut new = parse(
        "dialback_secret = \"two\"\n[listen]\ns2s = [\"127.0.0.1:5270\"]\n[dns]\ncache_entries = 200\n\
         [status]\nlisten = \"127.0.0.1:5280\"\n[limits]\nqueue = 7\n",
    );
    let restart = keep_running(&old, &mut new);
    let named = |what: &str| restart.iter().any(|r| r.starts_with(what));
    assert!(named("[listen]") && named("[status]") && named("[dns] cache_entries"));
    assert!(named("dialback_secret"), "{restart:?}");
    assert_eq!(restart.len(), 4, "{restart:?}");
    assert_eq!(new.listen, old.listen);
    assert_eq!(new.status, None);
    assert_eq!(new.dns_cache, old.dns_cache);
    assert_eq!(new.dialback_secret.as_deref(), Some("one"));
    // What can change does, and is reported.
    assert_eq!(new.limits.queue, 7);
    assert_eq!(changed(&old, &new), ["limits"]);
}

#[test]
fn changes_that_take_effect_at_once_need_no_restart() {
    let old = parse("[[component]]\ndomain = \"echo.a.test\"\nsecret = \"s1\"\n");
    let mut new = Config::parse(
        "domains = [\"a.test\", \"b.test\"]\n[[component]]\ndomain = \"echo.a.test\"\nsecret = \"s2\"\n\
         [tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n[policy]\ndeny = [\"spam.example\"]\n\
         [routes]\n\"c.test\" = \"127.0.0.3:5269\"\n[timeouts]\nidle = 3000\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let restart = keep_running(&old, &mut new);
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(
        changed(&old, &new),
        [
            "domains",
            "components",
            "routes",
            "timeouts",
            "tls",
            "policy"
        ]
    );
    assert!(changed(&old, &old).is_empty());
}

#[test]
fn components_added_to_a_daemon_started_without_any_need_a_restart_for_their_listener() {
    let old = parse("");
    let mut new = parse("[[component]]\ndomain = \"echo.a.test\"\nsecret = \"s\"\n");
    let restart = keep_running(&old, &mut new);
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert!(restart[0].starts_with("[[component]]"), "{restart:?}");
    // The components themselves are taken (they can connect after a restart, and routing
    // knows their domains now).
    assert_eq!(new.components.len(), 1);
}

#[test]
fn a_rejected_configuration_keeps_the_one_in_force() {
    let dir = Dir::new("rejected");
    dir.write("[limits]\nqueue = 100\n");
    let router = dir.router();
    let before = router.ctx();
    // A value start-up refuses: the same error, naming the file and the key.
    dir.write("[limits]\nstanza_size = 500\n");
    let e = prepare(&dir.file(), &router.live()).err().expect("refused");
    assert!(
        e.starts_with(&format!("{}: limits.stanza_size: ", dir.file().display())),
        "{e}"
    );
    assert!(!reload(&router));
    assert!(Arc::ptr_eq(&router.ctx(), &before));
    // Not TOML at all.
    dir.write("[limits\n");
    assert!(!reload(&router));
    // A certificate that cannot be loaded: the file is named.
    dir.write("[tls]\ncertificate = \"missing.crt\"\nkey = \"missing.key\"\n");
    let e = prepare(&dir.file(), &router.live()).err().expect("refused");
    assert!(e.contains("missing.crt"), "{e}");
    assert!(!reload(&router));
    assert!(Arc::ptr_eq(&router.ctx(), &before));
    assert_eq!(router.ctx().config.limits.queue, 100);
    assert!(router.tls().is_none());
}

#[test]
fn an_accepted_configuration_is_in_force_for_what_comes_next_and_the_secret_stays() {
    let dir = Dir::new("accepted");
    dir.write("");
    let router = dir.router();
    let before = router.live();
    let key = before.ctx.secret.key("b.test", "a.test", "id1");
    let tls = dir.cert("one");
    dir.write(&format!(
        "dialback_secret = \"new\"\n[limits]\nqueue = 9\n[policy]\ndeny = [\"spam.example\"]\n{tls}"
    ));
    assert!(reload(&router));
    let now = router.live();
    assert!(!Arc::ptr_eq(&now.ctx, &before.ctx));
    assert_eq!(now.ctx.config.limits.queue, 9);
    assert!(now.tls.is_some() && now.ctx.tls_available, "TLS turned on");
    // The secret in force stays: a key minted before the reload still verifies.
    assert!(now.ctx.secret.verify("b.test", "a.test", "id1", &key));
    assert_eq!(now.ctx.config.dialback_secret, None);
    // The snapshot taken before is unchanged (what established streams keep).
    assert_eq!(
        before.ctx.config.limits.queue,
        crate::config::Limits::default().queue
    );
    assert!(before.tls.is_none());
    // The router's own decisions follow at once: a stanza for a newly denied domain bounces.
    let comp = router
        .new_handle(crate::inbox::StreamKind::Component, 100)
        .unwrap();
    assert!(router.register_component(Domain::parse("a.test").unwrap(), comp.clone()));
    let m = Element::new("message", "jabber:server")
        .with_attr("from", "u@a.test")
        .with_attr("to", "v@spam.example")
        .with_attr("id", "m1");
    assert!(router.route(m).is_empty(), "nothing dialled");
    let bounced = comp.close();
    assert_eq!(bounced.len(), 1);
    let error = bounced[0]
        .child("error", "jabber:server")
        .expect("an error");
    assert!(
        error.child("not-allowed", STANZAS_NS).is_some(),
        "{:?}",
        bounced[0]
    );
}

#[test]
fn stanzas_from_a_newly_denied_domain_stop_at_the_router() {
    let dir = Dir::new("deny");
    dir.write("");
    let router = dir.router();
    let comp = router
        .new_handle(crate::inbox::StreamKind::Component, 100)
        .unwrap();
    assert!(router.register_component(Domain::parse("a.test").unwrap(), comp.clone()));
    let from = |domain: &str, id: &str| {
        Element::new("message", "jabber:server")
            .with_attr("from", format!("x@{domain}"))
            .with_attr("to", "u@a.test")
            .with_attr("id", id)
    };
    assert!(router.route(from("spam.example", "before")).is_empty());
    dir.write("[policy]\ndeny = [\"spam.example\"]\n");
    assert!(reload(&router));
    // As if on a stream verified before the reload: dropped, not delivered, not bounced.
    assert!(router.route(from("spam.example", "after")).is_empty());
    assert!(router.route(from("ok.example", "other")).is_empty());
    let ids: Vec<_> = comp
        .close()
        .iter()
        .map(|e| e.attr("id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["before", "other"]);
}

#[test]
fn tls_cannot_be_turned_off_while_direct_tls_listeners_are_open() {
    let dir = Dir::new("direct");
    let tls = dir.cert("one");
    dir.write(&tls);
    let text = std::fs::read_to_string(dir.file())
        .unwrap()
        .replace("s2s = [", "direct_tls = [\"127.0.0.1:5270\"]\ns2s = [");
    std::fs::write(dir.file(), &text).unwrap();
    let router = dir.router();
    // The new file has neither TLS nor the direct-TLS listener; the listener stays open.
    dir.write("");
    let e = prepare(&dir.file(), &router.live()).err().expect("refused");
    assert!(e.contains("tls.enabled"), "{e}");
    assert!(router.tls().is_some());
    // The resolver's settings follow: a new nameserver, one shared cache.
    dir.write(&format!("{tls}[timeouts]\ndns = 3\n"));
    let text = std::fs::read_to_string(dir.file())
        .unwrap()
        .replace("127.0.0.1:53", "127.0.0.9:53");
    std::fs::write(dir.file(), text).unwrap();
    let p = prepare(&dir.file(), &router.live()).unwrap();
    let shown = format!("{:?}", p.live.resolver);
    assert!(
        shown.contains("127.0.0.9:53") && shown.contains("3s"),
        "{shown}"
    );
    assert_eq!(p.changed, ["dns", "timeouts"]);
    assert_eq!(p.restart, ["[listen] (the listening sockets)"]);
}

#[test]
fn sasl01_auth_policy_takes_effect_without_a_restart() {
    let tls = "[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n";
    let old = parse(tls);
    let mut new = parse(&format!(
        "{tls}[tls.peers.\"b.test\"]\nverify = \"pkix\"\nauth = \"external\"\n"
    ));
    assert!(keep_running(&old, &mut new).is_empty());
    assert_eq!(changed(&old, &new), ["tls"]);
    assert!(new
        .tls
        .external_required_for(&Domain::parse("b.test").unwrap()));
}
