//! HTTP proxying on top of `upstream/`: headers, path rewrite, protocol upgrades and fault injection.
//! `proxy.rs` holds the order of these steps.

mod fault;
mod proxy;
mod upgrade;

pub use fault::Fault;
pub use proxy::{ForwardRoute, forward};
