//! dialbackd
pub mod config;
pub mod dns;
pub mod domain;
pub mod keys;
pub mod stanza;
pub mod stream;
pub mod xml;
