//! tagcache: a Redis module for cache-aside workloads. This file only registers things: the
//! data type, the commands, the configs and the event handlers.

// A panic inside the module aborts redis-server and loses every tenant's unsaved data.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#![deny(unsafe_code)]

pub mod accounting;
pub mod commands;
pub mod config;
pub mod engine;
pub mod entry;
pub mod events;
pub mod expiry;
pub mod fences;
#[allow(unsafe_code)]
pub mod ffi;
pub mod glob;
pub mod hash;
pub mod index;
pub mod key;
pub mod lease;
pub mod mem;
pub mod name;
pub mod ordered;
pub mod pending;
pub mod shardmap;
pub mod parking;
pub mod policy;
pub mod reclaim;
pub mod state;
pub mod stampede;
pub mod stats;
pub mod tagmap;
pub mod ttl;

use commands::{debug, invalidate, lease as leasing, read, stats as statistics, write};
use config::{
    DEFAULT_STALE, DEFAULT_TTL, LEASE_MS, LOG_INVALIDATIONS_OVER, MAX_MS, MAX_TAGS, MAX_TAGS_LIMIT,
    MAX_WAITERS, MAX_WAIT_MS, MIGRATION_FENCE_MS, NAMESPACE_SEPARATOR, RECLAIM_SLICE_US, RECLAIM_SYNC_MAX, TENANT_REGEX, TTL_RULES,
};
pub use ffi::keyspace;
use ffi::datatype::TAGCACHE_TYPE;
use ffi::gate::SERVER_GATE;
use policy::MAX_SECONDS;
use redis_module::configuration::{ConfigurationContext, ConfigurationFlags};
use redis_module::{redis_module, Context, InfoContext, RedisResult, RedisString, Status};

// The Redis allocator only exists inside redis-server; unit tests use the system one.
#[cfg(not(test))]
type Allocator = redis_module::alloc::RedisAlloc;
#[cfg(not(test))]
const ALLOCATOR: Allocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type Allocator = std::alloc::System;
#[cfg(test)]
const ALLOCATOR: Allocator = std::alloc::System;

/// Namespace key counts depend on the separator: recount them when it changes.
fn on_separator_changed<T>(_ctx: &ConfigurationContext, _name: &str, _value: &'static T) {
    let sep = NAMESPACE_SEPARATOR.get();
    state::with_state(|s| {
        s.separator = sep.to_vec();
        s.recount_namespaces(&sep);
    });
}

fn info_section(ctx: &InfoContext, for_crash_report: bool) {
    statistics::info(ctx, for_crash_report);
}

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    if !ffi::events::subscribe(ctx, events::hooks()) {
        ctx.log_warning("tagcache: could not subscribe to server events");
        return Status::Err;
    }
    let sep = NAMESPACE_SEPARATOR.get();
    state::with_state(|s| {
        s.leases = lease::Leases::with_salt(keyspace::now_ms() as u64);
        s.separator = sep.to_vec();
    });
    ffi::replicate::create_keywords();
    reclaim::install(ctx);
    if !ffi::command_info::register(ctx, &commands::docs::all()) {
        return Status::Err;
    }
    Status::Ok
}

redis_module! {
    name: "tagcache",
    version: 1,
    allocator: (Allocator, ALLOCATOR),
    // The gate runs first: it refuses servers older than 7.0 before anything is registered.
    data_types: [SERVER_GATE, TAGCACHE_TYPE],
    init: init,
    info: info_section,
    commands: [
        ["cache.set", write::set, "write deny-oom", 1, 1, 1, ""],
        ["cache.del", write::del, "write", 1, -1, 1, ""],
        ["cache.get", read::get, "readonly fast", 1, 1, 1, ""],
        ["cache.inspect", read::inspect, "readonly", 1, 1, 1, ""],
        ["cache.keys", read::keys, "readonly getkeys-api", 1, 1, 1, ""],
        ["cache.getormark", leasing::getormark, "write blocking", 1, 1, 1, ""],
        ["cache.fill", leasing::fill, "write deny-oom", 1, 1, 1, ""],
        ["cache.abandon", leasing::abandon, "write", 1, 1, 1, ""],
        ["cache.invalidate", invalidate::invalidate, "write getkeys-api", 1, 1, 1, ""],
        ["cache.invalidatetags", invalidate::invalidate_tags, "write", 0, 0, 0, ""],
        ["cache.stats", statistics::stats, "readonly", 0, 0, 0, ""],
        ["cache.debug", debug::debug, "readonly", 0, 0, 0, ""],
    ],
    event_handlers: [
        [@GENERIC: events::on_keyspace_event],
    ],
    configurations: [
        i64: [
            ["default-ttl", &*DEFAULT_TTL, 300, 0, MAX_SECONDS, ConfigurationFlags::DEFAULT, None],
            ["default-stale", &*DEFAULT_STALE, 0, 0, MAX_SECONDS, ConfigurationFlags::DEFAULT, None],
            ["lease-ms", &*LEASE_MS, 5000, 1, MAX_MS, ConfigurationFlags::DEFAULT, None],
            ["max-wait-ms", &*MAX_WAIT_MS, 30000, 0, MAX_MS, ConfigurationFlags::DEFAULT, None],
            ["max-waiters", &*MAX_WAITERS, 10000, 0, 1_000_000, ConfigurationFlags::DEFAULT, None],
            ["max-tags", &*MAX_TAGS, 64, 0, MAX_TAGS_LIMIT, ConfigurationFlags::DEFAULT, None],
            ["log-invalidations-over", &*LOG_INVALIDATIONS_OVER, 1000, 0, i64::MAX, ConfigurationFlags::DEFAULT, None],
            ["migration-fence-ms", &*MIGRATION_FENCE_MS, 600_000, 0, MAX_MS, ConfigurationFlags::DEFAULT, None],
            ["reclaim-slice-us", &*RECLAIM_SLICE_US, 1000, 50, 100_000, ConfigurationFlags::DEFAULT, None],
            ["reclaim-sync-max", &*RECLAIM_SYNC_MAX, 1000, 0, i64::MAX, ConfigurationFlags::DEFAULT, None],
        ],
        string: [
            ["ttl-rules", &*TTL_RULES, "", ConfigurationFlags::DEFAULT, None],
            ["tenant-regex", &*TENANT_REGEX, "", ConfigurationFlags::DEFAULT, None],
            ["namespace-separator", &*NAMESPACE_SEPARATOR, ":", ConfigurationFlags::DEFAULT, Some(Box::new(on_separator_changed))],
        ],
        bool: [],
        enum: [],
        module_args_as_configuration: true,
    ]
}
