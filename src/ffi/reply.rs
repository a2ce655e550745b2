//! Replies built straight from borrowed bytes, and the INFO section.

use redis_module::{raw, Context, InfoContext, RedisValue};
use std::ffi::CStr;

/// Replies with a bulk string straight from borrowed bytes (no copy into a RedisValue).
pub fn bytes(ctx: &Context, bytes: &[u8]) -> RedisValue {
    raw::reply_with_string_buffer(ctx.ctx, bytes.as_ptr().cast(), bytes.len());
    RedisValue::NoReply
}

/// Replies `+OK` (without the allocation the crate's simple-string reply makes).
pub fn ok(ctx: &Context) -> RedisValue {
    raw::reply_with_simple_string(ctx.ctx, c"OK".as_ptr());
    RedisValue::NoReply
}

/// Replies `[tag, item…]`: a simple-string tag followed by bulk strings.
pub fn tagged(ctx: &Context, tag: &CStr, items: &[&[u8]]) {
    let len = i64::try_from(items.len()).unwrap_or(0).saturating_add(1);
    raw::reply_with_array(ctx.ctx, len);
    raw::reply_with_simple_string(ctx.ctx, tag.as_ptr());
    for item in items {
        raw::reply_with_string_buffer(ctx.ctx, item.as_ptr().cast(), item.len());
    }
}

/// Replies `[tag, number]`.
pub fn tagged_number(ctx: &Context, tag: &CStr, n: i64) {
    raw::reply_with_array(ctx.ctx, 2);
    raw::reply_with_simple_string(ctx.ctx, tag.as_ptr());
    raw::reply_with_long_long(ctx.ctx, n);
}

/// A figure of the module's INFO section.
pub enum InfoFigure {
    Count(u64),
    Ratio(f64),
}

/// Adds the module's INFO section with these fields (`tagcache_<name>:<value>`).
pub fn info_section(ctx: &InfoContext, fields: impl IntoIterator<Item = (&'static str, InfoFigure)>) {
    raw::add_info_section(ctx.ctx, None);
    for (name, figure) in fields {
        match figure {
            InfoFigure::Count(v) => {
                raw::add_info_field_unsigned_long_long(ctx.ctx, name, v);
            }
            InfoFigure::Ratio(r) => {
                raw::add_info_field_double(ctx.ctx, name, r);
            }
        }
    }
}
