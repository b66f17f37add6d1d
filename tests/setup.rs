//! `tests/setup.sh`, the set-up `make test` does on a fresh machine, run against fake
//! `dpkg-query`, `apt-get` and `id` commands (first on PATH): as root it installs exactly the
//! missing packages, non-interactively; as another user it prints the `sudo apt-get install`
//! line and fails; with everything present it does nothing. Nothing on the real system is
//! queried or changed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of fake commands and the log `apt-get` writes to; removed on drop.
struct Fakes {
    dir: PathBuf,
}

impl Fakes {
    fn new(tag: &str) -> Fakes {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-setup-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // dpkg-query -W -f=FORMAT PKG...: "PKG ii" for those in $FAKE_INSTALLED, "PKG un" else.
        script(
            &dir,
            "dpkg-query",
            r#"shift; shift
for p in "$@"; do
    case " $FAKE_INSTALLED " in *" $p "*) echo "$p ii " ;; *) echo "$p un " ;; esac
done"#,
        );
        script(
            &dir,
            "apt-get",
            r#"echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} apt-get $*" >>"$FAKE_LOG""#,
        );
        script(&dir, "id", r#"echo "$FAKE_UID""#);
        Fakes { dir }
    }

    /// Run tests/setup.sh with `installed` packages present, as user id `uid`.
    fn run(&self, installed: &[&str], uid: u32) -> Output {
        let root = env!("CARGO_MANIFEST_DIR");
        Command::new(Path::new(root).join("tests/setup.sh"))
            .env("PATH", format!("{}:/usr/bin:/bin", self.dir.display()))
            .env("FAKE_INSTALLED", installed.join(" "))
            .env("FAKE_UID", uid.to_string())
            .env("FAKE_LOG", self.dir.join("apt.log"))
            .env_remove("DEBIAN_FRONTEND")
            .output()
            .expect("run tests/setup.sh")
    }

    /// What `apt-get` was called with, one line per call.
    fn apt_calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("apt.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The package list, as `tests/setup.sh --list` prints it.
fn packages() -> Vec<String> {
    let f = Fakes::new("list");
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup.sh"))
        .arg("--list")
        .env("PATH", format!("{}:/usr/bin:/bin", f.dir.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for needed in [
        "build-essential",
        "prosody",
        "lua-unbound",
        "python3-slixmpp",
        "nagios-check-xmppng",
        "biboumi",
    ] {
        assert!(list.iter().any(|p| p == needed), "{needed} not in {list:?}");
    }
    list
}

fn all_but<'a>(list: &'a [String], missing: &[&str]) -> Vec<&'a str> {
    list.iter()
        .map(String::as_str)
        .filter(|p| !missing.contains(p))
        .collect()
}

#[test]
fn everything_present_installs_nothing_and_says_nothing() {
    let list = packages();
    let f = Fakes::new("present");
    for uid in [0, 1000] {
        let out = f.run(&all_but(&list, &[]), uid);
        assert!(out.status.success(), "uid {uid}: {out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }
    assert!(f.apt_calls().is_empty(), "{:?}", f.apt_calls());
}

#[test]
fn root_installs_exactly_the_missing_packages_non_interactively() {
    let list = packages();
    let f = Fakes::new("root");
    // (prosody stays present: installing it makes the script stop the system service.)
    let out = f.run(&all_but(&list, &["dnsmasq-base", "python3-pytest"]), 0);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        f.apt_calls(),
        [
            "DEBIAN_FRONTEND=noninteractive apt-get update",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dnsmasq-base python3-pytest",
        ]
    );
}

#[test]
fn other_users_get_the_sudo_line_and_a_failure() {
    let list = packages();
    let f = Fakes::new("user");
    let out = f.run(&all_but(&list, &["lua-unbound", "python3-slixmpp"]), 1000);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudo apt-get install -y --no-install-recommends lua-unbound python3-slixmpp"),
        "{err}"
    );
    assert!(f.apt_calls().is_empty(), "{:?}", f.apt_calls());
}
