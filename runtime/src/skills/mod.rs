//! Built-in skills, so the binary is useful without writing Rust.

mod counter;
mod kv;

pub use counter::Counter;
pub use kv::Kv;
