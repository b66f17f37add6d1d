//! Which deep paths (see `fuzz_checks::REACHED`) the inputs in the given directories reach,
//! one line per file that reaches any: `cargo run --release --example reach -- DIR...`.
//! Used to pick the core targets' seeds from what a fuzzing run found.
use std::sync::atomic::Ordering;

fn main() {
    for dir in std::env::args().skip(1) {
        let target = std::path::Path::new(&dir)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let check = fuzz_checks::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a target dir")
            .1;
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let before = fuzz_checks::REACHED
                .each_ref()
                .map(|r| r.load(Ordering::Relaxed));
            check(&std::fs::read(&f).unwrap());
            let after = fuzz_checks::REACHED
                .each_ref()
                .map(|r| r.load(Ordering::Relaxed));
            let hit: Vec<usize> = (0..fuzz_checks::REACHED.len())
                .filter(|&i| after[i] > before[i])
                .collect();
            if !hit.is_empty() {
                println!(
                    "{} {} {:?}",
                    std::fs::metadata(&f).unwrap().len(),
                    f.display(),
                    hit
                );
            }
        }
    }
}
