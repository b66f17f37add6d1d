//! The checks behind dialbackd's fuzz targets, one public function per target (the target of
//! the same name in `fuzz_targets/` is a one-line call). Each takes arbitrary bytes and panics
//! when the code under test panics or an invariant does not hold.
//!
//! Shared between the cargo-fuzz crate (`fuzz/`, as its library) and the main crate's
//! `tests/fuzz_regressions.rs` (through `#[path]`), which replays the committed seed corpora
//! and every crash input kept in `fuzz/regressions/` under `cargo test`, without libFuzzer. So
//! this code uses nothing but dialbackd, its dependencies and std.

mod config;
mod cores;
mod dns;
mod xml;

pub use config::config;
pub use cores::{core_component, core_incoming, core_outgoing, REACHED};
pub use dns::dns_message;

/// The query every `dns_message` seed answers (for `examples/dns_seeds.rs`).
pub mod dns_seed_constants {
    pub use super::dns::{HOST_NAME, ID, SRV_NAME};
}
pub use xml::{serializer_roundtrip, xml_chunked, xml_reader};

/// The check of one target.
pub type Check = fn(&[u8]);

/// Every target, by name: what the regression test replays.
pub const TARGETS: [(&str, Check); 8] = [
    ("xml_reader", xml_reader),
    ("xml_chunked", xml_chunked),
    ("core_incoming", core_incoming),
    ("core_outgoing", core_outgoing),
    ("core_component", core_component),
    ("serializer_roundtrip", serializer_roundtrip),
    ("dns_message", dns_message),
    ("config", config),
];

/// Reads fuzz input as a sequence of small decisions; past the end every read is 0.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A value in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    pub(crate) fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    pub(crate) fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `max` raw bytes.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = max.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}
