//! ACL questions: who is calling, and may a user write a key.

use super::keyspace;
use redis_module::{raw, Context, RedisString};
use std::os::raw::c_int;

/// The ACL user name of the client running the command (None when Redis gives none).
pub fn current_user_name(ctx: &Context) -> Option<Vec<u8>> {
    let user_name = api!(RedisModule_GetCurrentUserName)?;
    // SAFETY: ctx is the command's context.
    let name = unsafe { user_name(ctx.ctx) };
    if name.is_null() {
        return None;
    }
    let name = RedisString::new(std::ptr::NonNull::new(ctx.ctx), name);
    Some(name.as_slice().to_vec())
}

/// Whether ACL user `user_name` may write every key (`~*`, `%W~*` or `%RW~*` in its root
/// permissions), so an invalidation of any size needs no per-key check.
pub fn may_write_every_key(ctx: &Context, user_name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(user_name) else {
        return false;
    };
    let Ok(redis_module::RedisValue::Array(fields)) = ctx.call("ACL", &["GETUSER", name]) else {
        return false;
    };
    let text = |v: &redis_module::RedisValue| match v {
        redis_module::RedisValue::SimpleString(s) => Some(s.as_bytes().to_vec()),
        redis_module::RedisValue::BulkString(s) => Some(s.as_bytes().to_vec()),
        redis_module::RedisValue::BulkRedisString(s) => Some(s.as_slice().to_vec()),
        redis_module::RedisValue::StringBuffer(s) => Some(s.clone()),
        _ => None,
    };
    let mut pairs = fields.chunks(2);
    pairs.any(|pair| match pair {
        [k, v] if text(k).as_deref() == Some(b"keys") => text(v).is_some_and(|keys| {
            keys.split(|b| *b == b' ')
                .any(|p| matches!(p, b"~*" | b"%W~*" | b"%RW~*" | b"allkeys"))
        }),
        _ => false,
    })
}

/// Whether ACL user `user_name` may delete/overwrite `key`; None when the user does not exist.
pub fn may_write(ctx: &Context, user_name: &[u8], key: &[u8]) -> Option<bool> {
    let get_user = api!(RedisModule_GetModuleUserFromUserName)?;
    let free_user = api!(RedisModule_FreeModuleUser)?;
    let name = keyspace::string(ctx, user_name);
    // SAFETY: name is a live string.
    let user = unsafe { get_user(name.inner) };
    if user.is_null() {
        return None;
    }
    // SAFETY: user was returned by GetModuleUserFromUserName and is freed once.
    unsafe { free_user(user) };
    Some(first_unwritable(ctx, user_name, &[key.to_vec()]).is_none())
}

/// The first of `keys` that ACL user `user_name` may not delete/overwrite; a user that no longer
/// exists may write nothing. None when every key is writable (or the server cannot tell).
pub fn first_unwritable<'k>(ctx: &Context, user_name: &[u8], keys: &'k [Vec<u8>]) -> Option<&'k [u8]> {
    let (Some(get_user), Some(check), Some(free_user)) = (
        api!(RedisModule_GetModuleUserFromUserName),
        api!(RedisModule_ACLCheckKeyPermissions),
        api!(RedisModule_FreeModuleUser),
    ) else {
        return None;
    };
    let name = keyspace::string(ctx, user_name);
    // SAFETY: name is a live string.
    let user = unsafe { get_user(name.inner) };
    if user.is_null() {
        return keys.first().map(Vec::as_slice);
    }
    let flags = (raw::REDISMODULE_CMD_KEY_DELETE | raw::REDISMODULE_CMD_KEY_UPDATE) as c_int;
    let denied = keys.iter().find(|k| {
        let key = keyspace::string(ctx, k);
        // SAFETY: user and key are live for this call.
        unsafe { check(user, key.inner, flags) != raw::REDISMODULE_OK as c_int }
    });
    // SAFETY: user was returned by GetModuleUserFromUserName and is freed once.
    unsafe { free_user(user) };
    denied.map(Vec::as_slice)
}
