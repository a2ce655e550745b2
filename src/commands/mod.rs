//! Thin command glue: parse arguments, call the engine, build the reply.

pub mod args;
pub mod debug;
pub mod docs;
pub mod invalidate;
pub mod lease;
pub mod read;
pub mod stats;
pub mod write;

pub use crate::ffi::reply::{bytes as reply_bytes, ok as reply_ok};

/// JSON text of a binary name: the string itself when it is UTF-8, else with `\xNN` escapes.
pub fn json_name(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::Value::String(bytes.escape_ascii().to_string()),
    }
}
