//! Parking clients inside the server (blocked on a key) and timers, behind safe generic
//! wrappers: the module's types implement `Parkable`, the trampolines here do the FFI.

use redis_module::{raw, Context, RedisString};
use std::os::raw::{c_int, c_void};

/// What a parked client carries through its blocking callbacks.
pub trait Parkable: Sized + 'static {
    /// The key was signalled: reply and return true, or return false to keep waiting.
    fn on_ready(&self, ctx: &Context) -> bool;
    /// The wait ended (its time ran out, or the module unblocked it): reply.
    fn on_timeout(&self, ctx: &Context);
    /// Redis is done with the client (answered, timed out or disconnected).
    fn on_free(self, ctx: Option<&Context>);
}

/// A blocked client, valid until its `on_free` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(usize);

/// Blocks the calling client on `key` for at most `timeout_ms`; None when Redis refused.
pub fn block_on_key<P: Parkable>(ctx: &Context, key: &RedisString, timeout_ms: i64, parked: P) -> Option<Handle> {
    let block = api!(RedisModule_BlockClientOnKeys)?;
    let data = Box::into_raw(Box::new(parked));
    let mut keys = [key.inner];
    // SAFETY: ctx is the command's context; keys outlives the call (Redis copies the names);
    // privdata is ours until free_trampoline runs.
    let handle = unsafe {
        block(
            ctx.ctx,
            Some(ready_trampoline::<P>),
            Some(timeout_trampoline::<P>),
            Some(free_trampoline::<P>),
            timeout_ms,
            keys.as_mut_ptr(),
            1,
            data.cast(),
        )
    };
    if handle.is_null() {
        // SAFETY: Redis did not take the privdata.
        drop(unsafe { Box::from_raw(data) });
        return None;
    }
    Some(Handle(handle as usize))
}

fn parked_of<'a, P: Parkable>(ctx: *mut raw::RedisModuleCtx) -> Option<&'a P> {
    let get = api!(RedisModule_GetBlockedClientPrivateData)?;
    // SAFETY: the privdata of clients blocked by `block_on_key::<P>` is always a Box<P>,
    // alive until free_trampoline runs.
    unsafe { get(ctx).cast::<P>().as_ref() }
}

/// SAFETY: called by Redis with the blocked client's context.
unsafe extern "C" fn ready_trampoline<P: Parkable>(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    match parked_of::<P>(ctx) {
        Some(p) if p.on_ready(&Context::new(ctx)) => raw::REDISMODULE_OK as c_int,
        _ => raw::REDISMODULE_ERR as c_int,
    }
}

/// SAFETY: called by Redis with the blocked client's context.
unsafe extern "C" fn timeout_trampoline<P: Parkable>(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    if let Some(p) = parked_of::<P>(ctx) {
        p.on_timeout(&Context::new(ctx));
    }
    raw::REDISMODULE_OK as c_int
}

/// SAFETY: called once by Redis with the privdata given to `block_on_key::<P>`.
unsafe extern "C" fn free_trampoline<P: Parkable>(ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    if privdata.is_null() {
        return;
    }
    let parked = *Box::from_raw(privdata.cast::<P>());
    let context = (!ctx.is_null()).then(|| Context::new(ctx));
    parked.on_free(context.as_ref());
}

/// Unblocks a parked client now: Redis answers it through `on_timeout`.
pub fn unblock(handle: Handle) {
    if let Some(unblock) = api!(RedisModule_UnblockClient) {
        // SAFETY: the handle is valid until the client's on_free, which its owner tracks.
        unsafe { unblock(handle.0 as *mut raw::RedisModuleBlockedClient, std::ptr::null_mut()) };
    }
}

/// Wakes the clients blocked on `key` (their `on_ready` runs).
pub fn signal_key_ready(ctx: &Context, key: &RedisString) {
    if let Some(signal) = api!(RedisModule_SignalKeyAsReady) {
        // SAFETY: ctx and key are live for this call.
        unsafe { signal(ctx.ctx, key.inner) };
    }
}

/// Runs `callback(ctx, data)` on the main thread after `delay_ms`.
pub fn start_timer<T: 'static>(ctx: &Context, delay_ms: i64, data: T, callback: fn(&Context, T)) {
    let Some(create) = api!(RedisModule_CreateTimer) else {
        return;
    };
    let boxed = Box::into_raw(Box::new((callback, data)));
    // SAFETY: the timer owns `boxed` until timer_trampoline takes it back.
    unsafe { create(ctx.ctx, delay_ms, Some(timer_trampoline::<T>), boxed.cast()) };
}

/// SAFETY: called once by Redis with the data given to `start_timer::<T>`.
unsafe extern "C" fn timer_trampoline<T: 'static>(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    let (callback, data) = *Box::from_raw(data.cast::<(fn(&Context, T), T)>());
    callback(&Context::new(ctx), data);
}

/// A client blocked until the module answers it with a number (`answer`): a command whose
/// answer is computed in later slices. Answer each exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter(usize);

/// Blocks the calling client until `answer`, with no time limit (and no timeout callback, so
/// CLIENT UNBLOCK cannot cut the wait short); None when Redis refused.
pub fn block_for_answer(ctx: &Context) -> Option<Waiter> {
    let block = api!(RedisModule_BlockClient)?;
    // SAFETY: ctx is the command's context; the callbacks only read the privdata `answer` gives.
    let handle = unsafe { block(ctx.ctx, Some(answer_trampoline), None, Some(answer_free_trampoline), 0) };
    (!handle.is_null()).then_some(Waiter(handle as usize))
}

/// Unblocks `waiter` with `n` as its reply (Redis drops the reply if the client has gone).
pub fn answer(waiter: Waiter, n: i64) {
    let Some(unblock) = api!(RedisModule_UnblockClient) else {
        return;
    };
    let data = Box::into_raw(Box::new(n));
    // SAFETY: a Waiter is valid until it is answered, which its owner does once; Redis owns
    // `data` from now on and hands it to answer_free_trampoline.
    let rc = unsafe { unblock(waiter.0 as *mut raw::RedisModuleBlockedClient, data.cast()) };
    if rc != raw::REDISMODULE_OK as c_int {
        // SAFETY: Redis did not take the privdata.
        drop(unsafe { Box::from_raw(data) });
    }
}

/// SAFETY: called by Redis with the context of a client unblocked by `answer`.
unsafe extern "C" fn answer_trampoline(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let Some(get) = api!(RedisModule_GetBlockedClientPrivateData) else {
        return raw::REDISMODULE_ERR as c_int;
    };
    // SAFETY: the privdata of clients unblocked by `answer` is a Box<i64>, alive until
    // answer_free_trampoline runs.
    let n = unsafe { get(ctx).cast::<i64>().as_ref() }.copied().unwrap_or(0);
    Context::new(ctx).reply(Ok(redis_module::RedisValue::Integer(n)));
    raw::REDISMODULE_OK as c_int
}

/// SAFETY: called once by Redis with the privdata given to `answer`.
unsafe extern "C" fn answer_free_trampoline(_ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    if !privdata.is_null() {
        drop(Box::from_raw(privdata.cast::<i64>()));
    }
}
