//! Thin command glue: parse arguments, call the engine, build the reply.

pub mod args;
pub mod debug;
pub mod docs;
pub mod invalidate;
pub mod lease;
pub mod read;
pub mod stats;
pub mod write;

use redis_module::{raw, Context, RedisValue};

/// Replies with a bulk string straight from borrowed bytes (no copy into a RedisValue).
pub fn reply_bytes(ctx: &Context, bytes: &[u8]) -> RedisValue {
    raw::reply_with_string_buffer(ctx.ctx, bytes.as_ptr().cast(), bytes.len());
    RedisValue::NoReply
}

/// Replies `+OK` (without the allocation the crate's simple-string reply makes).
pub fn reply_ok(ctx: &Context) -> RedisValue {
    raw::reply_with_simple_string(ctx.ctx, c"OK".as_ptr());
    RedisValue::NoReply
}

/// JSON text of a binary name: the string itself when it is UTF-8, else with `\xNN` escapes.
pub fn json_name(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::Value::String(bytes.escape_ascii().to_string()),
    }
}
