//! Replays the fuzz targets' committed inputs without libFuzzer, so `cargo test` runs the same
//! checks as `make fuzz` on them: every seed in `fuzz/corpus/TARGET/` and every crash input a
//! fuzzer found, kept in `fuzz/regressions/TARGET/` (named after what it found). The checks
//! themselves live in `fuzz/checks/` and are shared with the fuzz targets.

#[allow(dead_code, unused_imports)]
#[path = "../fuzz/checks/mod.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;

/// Every file under `dir/TARGET/` for every target, through that target's check; returns the
/// number of inputs replayed and the failures (file and panic message).
fn replay(dir: &str) -> (usize, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut count = 0;
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    (count, failures)
}

#[test]
fn fuzz_crash_inputs_stay_fixed() {
    let (count, failures) = replay("regressions");
    assert!(count > 0, "no regression inputs found");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fuzz_seed_corpora_pass_the_checks() {
    let (count, failures) = replay("corpus");
    // Every target has seeds.
    for (target, _) in checks::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        assert!(
            dir.read_dir().is_ok_and(|mut d| d.next().is_some()),
            "no seeds for {target}"
        );
    }
    assert!(count > 0);
    assert!(failures.is_empty(), "{failures:#?}");
    // The core seeds go all the way: delivery on an inbound stream, stanzas out after `valid`,
    // a verify connection's `valid`, delivery from a component, a db:verify answered `valid`,
    // SASL EXTERNAL success on an inbound stream and on an outbound one (SASL-01).
    let reached = checks::REACHED
        .each_ref()
        .map(|r| r.load(Ordering::Relaxed));
    assert!(
        reached.iter().all(|&n| n > 0),
        "deep paths reached: {reached:?}"
    );
}
