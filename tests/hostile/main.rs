//! Hostile input on the wire: one module per attack class of the "Hostile input" issue. Each
//! test asserts the wire outcome, that the daemon is still alive and that a legitimate dialback
//! still succeeds afterwards; amplification cases also bound the daemon's peak RSS (VmHWM).
mod caps;
#[path = "../common/mod.rs"]
mod common;
mod logs;
mod memory;
mod readahead;
mod ssrf;
mod streams;
