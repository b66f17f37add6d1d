//! dialbackd
pub mod domain;
pub mod keys;
