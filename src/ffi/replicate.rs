//! Replication of writes as their canonical CACHE.SET, reusing the client's own string objects.

use crate::entry::{canonical_set, Piece};
use redis_module::{raw, Context, RedisString};

/// Replicates `CACHE.SET key value (PXAT ms | NOEXPIRE) STALE s [TAGS …] [TENANT t]`. The key,
/// value, tags and tenant are the client's own string objects (Redis only bumps their
/// refcount), so a large value is never copied for replication.
pub fn canonical_set_command(
    ctx: &Context,
    key: &RedisString,
    value: &RedisString,
    fresh_until: Option<i64>,
    stale_ms: i64,
    tags: &[RedisString],
    tenant: Option<&RedisString>,
) {
    let (Some(replicate), Some(from_number), Some(free)) = (
        api!(RedisModule_Replicate),
        api!(RedisModule_CreateStringFromLongLong),
        api!(RedisModule_FreeString),
    ) else {
        return;
    };
    let mut numbers: Vec<*mut raw::RedisModuleString> = Vec::with_capacity(3);
    let args = canonical_set(
        key.inner,
        value.inner,
        fresh_until,
        stale_ms,
        tags.iter().map(|t| t.inner).collect(),
        tenant.map(|t| t.inner),
        |piece| match piece {
            Piece::Keyword(k) => keyword(k),
            Piece::Number(n) => {
                // SAFETY: creates a string owned by us, freed below.
                let s = unsafe { from_number(ctx.ctx, n) };
                numbers.push(s);
                s
            }
        },
    );
    if args.iter().all(|a| !a.is_null()) {
        // SAFETY: every pointer is a live string for the duration of the call; "v" takes an
        // array and its length, and Redis takes its own references.
        unsafe {
            replicate(ctx.ctx, c"CACHE.SET".as_ptr(), c"v".as_ptr(), args.as_ptr(), args.len());
        }
    }
    for s in numbers {
        // SAFETY: created above, freed once.
        unsafe { free(ctx.ctx, s) };
    }
}

const KEYWORDS: [&[u8]; 5] = [b"PXAT", b"NOEXPIRE", b"STALE", b"TAGS", b"TENANT"];

static KEYWORD_STRINGS: std::sync::OnceLock<[usize; 5]> = std::sync::OnceLock::new();

/// Creates the keyword strings of the canonical CACHE.SET once (at load); Redis only bumps
/// their refcount when it propagates them.
pub fn create_keywords() {
    let Some(create) = api!(RedisModule_CreateString) else {
        return;
    };
    let strings = KEYWORDS.map(|k| {
        // SAFETY: a NULL context makes a string that lives until freed; it is kept forever.
        unsafe { create(std::ptr::null_mut(), k.as_ptr().cast(), k.len()) as usize }
    });
    let _ = KEYWORD_STRINGS.set(strings);
}

fn keyword(k: &'static [u8]) -> *mut raw::RedisModuleString {
    KEYWORD_STRINGS
        .get()
        .and_then(|strings| KEYWORDS.iter().position(|w| *w == k).and_then(|i| strings.get(i)))
        .map_or(std::ptr::null_mut(), |s| *s as *mut raw::RedisModuleString)
}
