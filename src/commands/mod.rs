//! One file per `arpanet` verb.

pub mod check;
pub mod info;
