//! dialbackd
pub mod config;
pub mod conn;
pub mod dns;
pub mod domain;
pub mod keys;
pub mod net;
pub mod router;
pub mod stanza;
pub mod stream;
pub mod tls;
pub mod xml;
