//! What COMMAND INFO and COMMAND DOCS say about each command (registered at load).

use crate::ffi::command_info::{
    block, double, flag, integer, key, one_of, pattern, string, unix_time, Arg, Doc, KeyAccess, KeySpec,
};

fn one_key(access: KeyAccess) -> Option<KeySpec> {
    Some(KeySpec { access, last: 0, tenant: false })
}

fn tenant(access: KeyAccess) -> Option<KeySpec> {
    Some(KeySpec { access, last: 0, tenant: true })
}

/// The options CACHE.SET and CACHE.FILL share.
fn write_options() -> Vec<Arg> {
    vec![
        one_of(
            "expiration",
            vec![
                integer("seconds").token("EX"),
                integer("milliseconds").token("PX"),
                unix_time("unix-time-seconds").token("EXAT"),
                unix_time("unix-time-milliseconds").token("PXAT"),
                flag("NOEXPIRE"),
            ],
        )
        .optional(),
        integer("stale-seconds").token("STALE").optional(),
        block("tags", vec![integer("numtags"), string("tag").multiple()]).token("TAGS").optional(),
        string("tenant").token("TENANT").optional(),
    ]
}

fn with(first: Vec<Arg>, rest: Vec<Arg>) -> Vec<Arg> {
    first.into_iter().chain(rest).collect()
}

pub fn all() -> Vec<Doc> {
    vec![
        Doc {
            name: "cache.set",
            summary: "Stores a cache entry with its tenant, tags, TTL and stale window, and indexes it.",
            complexity: "O(T + log K): T tags, K keys of the tenant",
            arity: -3,
            keys: one_key(KeyAccess::Overwrite),
            args: with(vec![key("key"), string("value")], write_options()),
        },
        Doc {
            name: "cache.get",
            summary: "Returns the value of a fresh entry, else nil. TENANT names whom a miss is counted for.",
            complexity: "O(1)",
            arity: -2,
            keys: one_key(KeyAccess::Read),
            args: vec![key("key"), string("tenant").token("TENANT").optional()],
        },
        Doc {
            name: "cache.del",
            summary: "Deletes entries (keys of other types are left alone) and voids their leases.",
            complexity: "O(N) for N keys",
            arity: -2,
            keys: Some(KeySpec { access: KeyAccess::Delete, last: -1, tenant: false }),
            args: vec![key("key").multiple()],
        },
        Doc {
            name: "cache.inspect",
            summary: "Describes an entry and its lease as JSON.",
            complexity: "O(T) for T tags",
            arity: 2,
            keys: one_key(KeyAccess::Inspect),
            args: vec![key("key")],
        },
        Doc {
            name: "cache.keys",
            summary: "Lists a tenant's entries whose names match a glob, from the index.",
            complexity: "O(keys of the tenant inside the pattern's literal prefix)",
            arity: -3,
            keys: tenant(KeyAccess::Read),
            args: vec![key("tenant"), pattern("pattern"), integer("count").token("LIMIT").optional()],
        },
        Doc {
            name: "cache.getormark",
            summary: "Reads an entry or claims the right to compute it (HIT, MISS, STALE, BUSY); may park the caller until the fill.",
            complexity: "O(1)",
            arity: -2,
            keys: one_key(KeyAccess::ReadUpdate),
            args: vec![
                key("key"),
                integer("lease-milliseconds").token("LEASE").optional(),
                integer("wait-milliseconds").token("WAIT").optional(),
                double("beta").token("EARLY").optional(),
                string("tenant").token("TENANT").optional(),
            ],
        },
        Doc {
            name: "cache.fill",
            summary: "Stores the value computed under a lease; refused with LEASE when the lease is no longer valid.",
            complexity: "O(T + log K): T tags, K keys of the tenant",
            arity: -4,
            keys: one_key(KeyAccess::Overwrite),
            args: with(vec![key("key"), string("token"), string("value")], write_options()),
        },
        Doc {
            name: "cache.abandon",
            summary: "Releases a lease without a value; the next parked caller takes it.",
            complexity: "O(1)",
            arity: 3,
            keys: one_key(KeyAccess::Update),
            args: vec![key("key"), string("token")],
        },
        Doc {
            name: "cache.invalidate",
            summary: "Deletes (or, with SOFT, marks stale) a tenant's entries whose names match a glob, and voids their leases.",
            complexity: "O(matching keys + keys of the tenant inside the pattern's literal prefix)",
            arity: -3,
            keys: tenant(KeyAccess::Delete),
            args: vec![key("tenant"), pattern("pattern"), flag("SOFT").optional()],
        },
        Doc {
            name: "cache.invalidatetags",
            summary: "Deletes (or, with SOFT, marks stale) the entries carrying any of the tags; refuses older fills carrying them.",
            complexity: "O(entries carrying the tags)",
            arity: -3,
            keys: None,
            args: vec![integer("numtags"), string("tag").multiple(), flag("SOFT").optional()],
        },
        Doc {
            name: "cache.stats",
            summary: "Hit/miss and activity counters, global or per tenant, as JSON; RESET zeroes them after reading.",
            complexity: "O(tenants + namespaces), O(keys of the tenant) with TENANT",
            arity: -1,
            keys: None,
            args: vec![string("tenant").token("TENANT").optional(), flag("RESET").optional()],
        },
        Doc {
            name: "cache.debug",
            summary: "INDEXCHECK: compares the index with the keyspace (O(N), for tests and operators).",
            complexity: "O(N) for N keys",
            arity: 2,
            keys: None,
            args: vec![flag("INDEXCHECK")],
        },
    ]
}
