//! Issue 8 ("Also deliver"): a model-based randomized test. A seeded sequence of operations —
//! CACHE.SET/GET/DEL/GETORMARK/FILL/ABANDON/INVALIDATE/INVALIDATETAGS/KEYS/INSPECT mixed with
//! native SET, DEL, UNLINK, RENAME, COPY, MOVE, EXPIRE, PERSIST, TTL, TYPE, SWAPDB and FLUSHDB
//! over two databases — runs against a real server, and every reply is compared with what a small
//! in-test model of the README's contract predicts. Every `CHECK_EVERY` steps and at the end the
//! server's whole state is compared with the model (INDEXCHECK, DBSIZE, CACHE.KEYS per tenant,
//! CACHE.INSPECT and CACHE.GET of every key). The second test runs the workload on a primary with
//! a replica and checks the replica against the same model and the primary's `DEBUG DIGEST`.
//!
//! No short TTLs and no sleeps: nothing expires during a run, so the outcome depends on the seed
//! only. A failure names the seed and the step and lists the last commands; rerun one seed with
//! `TAGCACHE_MODEL_SEED=<seed> cargo test --test model` (`TAGCACHE_MODEL_STEPS` sets the length).

mod common;

use common::{error_text, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Connection, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const STEPS: usize = 3000;
const SEEDS: [u64; 4] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003, 0x5eed_0004];
const REPLICATED_SEEDS: [u64; 2] = [0x5eed_0101, 0x5eed_0102];
const CHECK_EVERY: usize = 250;
/// Far longer than any run: no lease expires during a test, however slow the machine.
const LEASE_MS: &str = "600000";
const HISTORY: usize = 60;

/// 40 names: mostly hash-tagged per tenant, a few whose tenant is empty or a surprise, so that
/// RENAME/COPY/MOVE change derived tenants and patterns cross tenants.
fn universe() -> Vec<String> {
    let mut keys: Vec<String> = (0..4)
        .flat_map(|t| (0..8).map(move |i| format!("ns:{{t{t}}}:{i}")))
        .collect();
    keys.extend(
        [
            "ab:{t1}:0",
            "ab:{t2}:1",
            "plain:0",
            "plain:1",
            "plain:2",
            "x{}y",
            "a{t2",
            "q}{t3}:1",
        ]
        .iter()
        .map(|k| k.to_string()),
    );
    keys
}

/// Tenants as written in TENANT options and tenant arguments (`{t1}` is tenant `t1`).
const TENANT_OPTIONS: [&str; 6] = ["t0", "t1", "t2", "t3", "{t1}", "{t3}"];
const TENANT_ARGS: [&str; 9] = ["*", "*", "t0", "t1", "t2", "t3", "{t1}", "{t2}", ""];
/// Every tenant a key of the universe can have, for the per-tenant checks.
const TENANTS: [&str; 5] = ["t0", "t1", "t2", "t3", ""];
const TAG_POOL: [&str; 6] = ["red", "green", "blue", "cyan", "pink", "gray"];
const PATTERNS: [&str; 13] = [
    "*",
    "ns:*",
    "ns:{t1}:*",
    "ns:{t?}:1",
    "ns:{t[02]}:*",
    "ns:{t[^0]}:[0-3]",
    "*:[4-7]",
    "plain:*",
    "*{t3}*",
    "ab:*",
    "a{*",
    "x{}y",
    "zz*",
];

// ---------------------------------------------------------------- the contract, in miniature

/// Redis Cluster's hash tag, else the empty tenant (no tenant-regex is configured).
fn derived_tenant(key: &str) -> String {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or("")
        .to_string()
}

/// A tenant as written by a client: `{t}` is tenant `t`.
fn tenant_arg(arg: &str) -> String {
    match arg.strip_prefix('{').and_then(|a| a.strip_suffix('}')) {
        Some(inner) if !inner.is_empty() => inner.to_string(),
        _ => arg.to_string(),
    }
}

/// `*` means every tenant.
fn scope_of(arg: &str) -> Option<String> {
    (arg != "*").then(|| tenant_arg(arg))
}

/// Redis glob (`*`, `?`, `[...]` with `^` and ranges, `\` escapes), for the patterns above.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, tail)) = s.split_first() else {
                return false;
            };
            let (negate, class) = match rest.split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, rest),
            };
            let end = class.iter().position(|&b| b == b']').unwrap_or(class.len());
            let (set, after) = (&class[..end], class.get(end + 1..).unwrap_or_default());
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    let (lo, hi) = (set[i].min(set[i + 2]), set[i].max(set[i + 2]));
                    hit |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(after, tail)
        }
        Some((b'\\', rest)) if !rest.is_empty() => s.first() == rest.first() && glob(&rest[1..], &s[1..]),
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Ttl {
    /// No option: `tagcache.default-ttl` (300 s) applies.
    Default,
    Ex(u64),
    Px(u64),
    NoExpire,
}

/// The options shared by CACHE.SET and CACHE.FILL.
#[derive(Clone, Debug)]
struct Write {
    value: String,
    ttl: Ttl,
    tags: Vec<String>,
    tenant: Option<String>,
}

impl Write {
    fn args(&self) -> Vec<String> {
        let mut a = vec![self.value.clone()];
        match &self.ttl {
            Ttl::Default => {}
            Ttl::Ex(s) => a.extend(["EX".to_string(), s.to_string()]),
            Ttl::Px(ms) => a.extend(["PX".to_string(), ms.to_string()]),
            Ttl::NoExpire => a.push("NOEXPIRE".to_string()),
        }
        if !self.tags.is_empty() {
            a.extend(["TAGS".to_string(), self.tags.len().to_string()]);
            a.extend(self.tags.iter().cloned());
        }
        if let Some(t) = &self.tenant {
            a.extend(["TENANT".to_string(), t.clone()]);
        }
        a
    }
}

#[derive(Clone, Debug)]
enum Op {
    Set {
        db: usize,
        key: String,
        w: Write,
    },
    Get {
        db: usize,
        key: String,
    },
    CacheDel {
        db: usize,
        keys: Vec<String>,
    },
    GetOrMark {
        db: usize,
        key: String,
    },
    Fill {
        db: usize,
        key: String,
        token: String,
        w: Write,
    },
    Abandon {
        db: usize,
        key: String,
        token: String,
    },
    Invalidate {
        db: usize,
        tenant: String,
        pattern: String,
    },
    InvalidateTags {
        db: usize,
        tags: Vec<String>,
    },
    Keys {
        db: usize,
        tenant: String,
        pattern: String,
        limit: Option<usize>,
    },
    Inspect {
        db: usize,
        key: String,
    },
    NativeSet {
        db: usize,
        key: String,
        value: String,
    },
    Del {
        db: usize,
        keys: Vec<String>,
        unlink: bool,
    },
    Rename {
        db: usize,
        src: String,
        dst: String,
    },
    Copy {
        db: usize,
        src: String,
        dst: String,
        dst_db: usize,
        replace: bool,
    },
    Move {
        db: usize,
        key: String,
    },
    Expire {
        db: usize,
        key: String,
        secs: u64,
    },
    Persist {
        db: usize,
        key: String,
    },
    Ttl {
        db: usize,
        key: String,
    },
    Type {
        db: usize,
        key: String,
    },
    SwapDb,
    FlushDb {
        db: usize,
    },
}

impl Op {
    /// The database whose connection sends the command.
    fn db(&self) -> usize {
        match self {
            Op::SwapDb => 0,
            Op::Set { db, .. }
            | Op::Get { db, .. }
            | Op::CacheDel { db, .. }
            | Op::GetOrMark { db, .. }
            | Op::Fill { db, .. }
            | Op::Abandon { db, .. }
            | Op::Invalidate { db, .. }
            | Op::InvalidateTags { db, .. }
            | Op::Keys { db, .. }
            | Op::Inspect { db, .. }
            | Op::NativeSet { db, .. }
            | Op::Del { db, .. }
            | Op::Rename { db, .. }
            | Op::Copy { db, .. }
            | Op::Move { db, .. }
            | Op::Expire { db, .. }
            | Op::Persist { db, .. }
            | Op::Ttl { db, .. }
            | Op::Type { db, .. }
            | Op::FlushDb { db } => *db,
        }
    }

    fn args(&self) -> Vec<String> {
        let s = |v: &str| v.to_string();
        match self {
            Op::Set { key, w, .. } => [vec![s("CACHE.SET"), key.clone()], w.args()].concat(),
            Op::Get { key, .. } => vec![s("CACHE.GET"), key.clone()],
            Op::CacheDel { keys, .. } => [vec![s("CACHE.DEL")], keys.clone()].concat(),
            Op::GetOrMark { key, .. } => vec![s("CACHE.GETORMARK"), key.clone(), s("LEASE"), s(LEASE_MS)],
            Op::Fill { key, token, w, .. } => [vec![s("CACHE.FILL"), key.clone(), token.clone()], w.args()].concat(),
            Op::Abandon { key, token, .. } => vec![s("CACHE.ABANDON"), key.clone(), token.clone()],
            Op::Invalidate { tenant, pattern, .. } => vec![s("CACHE.INVALIDATE"), tenant.clone(), pattern.clone()],
            Op::InvalidateTags { tags, .. } => {
                [vec![s("CACHE.INVALIDATETAGS"), tags.len().to_string()], tags.clone()].concat()
            }
            Op::Keys {
                tenant, pattern, limit, ..
            } => {
                let mut a = vec![s("CACHE.KEYS"), tenant.clone(), pattern.clone()];
                if let Some(n) = limit {
                    a.extend([s("LIMIT"), n.to_string()]);
                }
                a
            }
            Op::Inspect { key, .. } => vec![s("CACHE.INSPECT"), key.clone()],
            Op::NativeSet { key, value, .. } => vec![s("SET"), key.clone(), value.clone()],
            Op::Del { keys, unlink, .. } => [vec![s(if *unlink { "UNLINK" } else { "DEL" })], keys.clone()].concat(),
            Op::Rename { src, dst, .. } => vec![s("RENAME"), src.clone(), dst.clone()],
            Op::Copy {
                src,
                dst,
                dst_db,
                replace,
                ..
            } => {
                let mut a = vec![s("COPY"), src.clone(), dst.clone(), s("DB"), dst_db.to_string()];
                if *replace {
                    a.push(s("REPLACE"));
                }
                a
            }
            Op::Move { db, key } => vec![s("MOVE"), key.clone(), (1 - db).to_string()],
            Op::Expire { key, secs, .. } => vec![s("EXPIRE"), key.clone(), secs.to_string()],
            Op::Persist { key, .. } => vec![s("PERSIST"), key.clone()],
            Op::Ttl { key, .. } => vec![s("TTL"), key.clone()],
            Op::Type { key, .. } => vec![s("TYPE"), key.clone()],
            Op::SwapDb => vec![s("SWAPDB"), s("0"), s("1")],
            Op::FlushDb { .. } => vec![s("FLUSHDB")],
        }
    }
}

/// An entry's index data; a native string has none.
#[derive(Clone, Debug, PartialEq)]
struct Meta {
    tenant: String,
    explicit: bool,
    tags: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct Item {
    value: String,
    has_ttl: bool,
    /// `None`: a native string (not an entry).
    meta: Option<Meta>,
}

impl Item {
    /// The item as it lands under `name` (RENAME, COPY): a derived tenant follows the name.
    fn arriving_as(&self, name: &str) -> Item {
        let mut item = self.clone();
        if let Some(m) = item.meta.as_mut().filter(|m| !m.explicit) {
            m.tenant = derived_tenant(name);
        }
        item
    }
}

#[derive(Clone, Debug)]
struct Lease {
    token: String,
    /// Tags invalidated by CACHE.INVALIDATETAGS since the grant (in any database: the README
    /// does not limit the rule to the lease's database), with the databases the calls ran in.
    /// A FILL carrying one is refused.
    fenced: BTreeMap<String, BTreeSet<usize>>,
}

#[derive(Default)]
struct Db {
    items: BTreeMap<String, Item>,
    leases: BTreeMap<String, Lease>,
}

/// What CACHE.INSPECT shows, reduced to what the model knows.
#[derive(Clone, Debug, PartialEq)]
struct View {
    exists: bool,
    indexed: bool,
    tenant: String,
    explicit: bool,
    tags: BTreeSet<String>,
    has_ttl: bool,
    lease: bool,
}

/// A predicted reply.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Ok,
    Int(i64),
    Nil,
    Bulk(String),
    /// An error whose text starts with this.
    Error(&'static str),
    /// Entry names: in name order for one tenant, as a set for tenant `*`.
    Names {
        names: Vec<String>,
        ordered: bool,
    },
    Hit(String),
    /// `MISS token`: the model learns the token from the reply.
    Miss,
    Busy,
    /// TTL: -2 missing, -1 no expiry, else positive.
    Ttl(i64),
    Status(&'static str),
    Inspect(View),
}

#[derive(Default)]
struct Model {
    dbs: [Db; 2],
    /// Tokens of leases that are over (voided, filled, abandoned): a FILL or ABANDON with one
    /// must fail.
    old_tokens: Vec<(usize, String, String)>,
    /// Leases the last operation voided, checked on the server right away.
    voided_now: Vec<(usize, String)>,
    /// How often each interesting path was taken (printed per seed, to show coverage).
    coverage: BTreeMap<&'static str, usize>,
}

impl Model {
    fn count(&mut self, what: &'static str) {
        *self.coverage.entry(what).or_default() += 1;
    }

    fn end_lease(&mut self, db: usize, key: &str, why: &'static str) -> Option<Lease> {
        let lease = self.dbs[db].leases.remove(key)?;
        self.old_tokens.push((db, key.to_string(), lease.token.clone()));
        if self.old_tokens.len() > 16 {
            self.old_tokens.remove(0);
        }
        self.voided_now.push((db, key.to_string()));
        self.count(why);
        Some(lease)
    }

    fn store(&mut self, db: usize, key: &str, w: &Write) {
        let meta = Meta {
            tenant: w.tenant.as_deref().map_or_else(|| derived_tenant(key), tenant_arg),
            explicit: w.tenant.is_some(),
            tags: w.tags.iter().cloned().collect(),
        };
        let has_ttl = w.ttl != Ttl::NoExpire;
        self.dbs[db].items.insert(
            key.to_string(),
            Item {
                value: w.value.clone(),
                has_ttl,
                meta: Some(meta),
            },
        );
    }

    /// The tenant that scopes a key: its entry's, else (no value, e.g. a leased key) derived.
    fn tenant_of(&self, db: usize, key: &str) -> String {
        match self.dbs[db].items.get(key).and_then(|i| i.meta.as_ref()) {
            Some(m) => m.tenant.clone(),
            None => derived_tenant(key),
        }
    }

    fn entry_names(&self, db: usize, scope: Option<&str>, pattern: &str) -> Vec<String> {
        self.dbs[db]
            .items
            .iter()
            .filter(|(k, i)| {
                i.meta.as_ref().is_some_and(|m| scope.is_none_or(|t| t == m.tenant))
                    && glob(pattern.as_bytes(), k.as_bytes())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn remove_entries(&mut self, db: usize, names: &[String]) -> Expect {
        for k in names {
            self.dbs[db].items.remove(k);
        }
        Expect::Int(names.len() as i64)
    }

    fn apply(&mut self, op: &Op) -> Expect {
        self.voided_now.clear();
        match op {
            Op::Set { db, key, w } => self.set(*db, key, w),
            Op::Get { db, key } => self.get(*db, key),
            Op::CacheDel { db, keys } => self.cache_del(*db, keys),
            Op::GetOrMark { db, key } => self.getormark(*db, key),
            Op::Fill { db, key, token, w } => self.fill(*db, key, token, w),
            Op::Abandon { db, key, token } => self.abandon(*db, key, token),
            Op::Invalidate { db, tenant, pattern } => self.invalidate(*db, tenant, pattern),
            Op::InvalidateTags { db, tags } => self.invalidate_tags(*db, tags),
            Op::Keys {
                db,
                tenant,
                pattern,
                limit,
            } => self.keys(*db, tenant, pattern, *limit),
            Op::Inspect { db, key } => self.inspect(*db, key, true),
            Op::NativeSet { db, key, value } => self.native_set(*db, key, value),
            Op::Del { db, keys, .. } => self.del(*db, keys),
            Op::Rename { db, src, dst } => self.rename(*db, src, dst),
            Op::Copy {
                db,
                src,
                dst,
                dst_db,
                replace,
            } => self.copy(*db, src, dst, *dst_db, *replace),
            Op::Move { db, key } => self.move_key(*db, key),
            Op::Expire { db, key, .. } => self.expire(*db, key),
            Op::Persist { db, key } => self.persist(*db, key),
            Op::Ttl { db, key } => self.ttl(*db, key),
            Op::Type { db, key } => self.key_type(*db, key),
            Op::SwapDb => self.swapdb(),
            Op::FlushDb { db } => self.flushdb(*db),
        }
    }

    fn set(&mut self, db: usize, key: &str, w: &Write) -> Expect {
        self.end_lease(db, key, "lease voided by CACHE.SET");
        self.store(db, key, w);
        Expect::Ok
    }

    fn get(&self, db: usize, key: &str) -> Expect {
        match self.dbs[db].items.get(key) {
            None => Expect::Nil,
            Some(Item { meta: None, .. }) => Expect::Error("WRONGTYPE"),
            Some(item) => Expect::Bulk(item.value.clone()),
        }
    }

    fn cache_del(&mut self, db: usize, keys: &[String]) -> Expect {
        let mut removed = 0;
        for k in keys {
            if self.dbs[db].items.get(k).is_some_and(|i| i.meta.is_some()) {
                self.dbs[db].items.remove(k);
                removed += 1;
            }
            self.end_lease(db, k, "lease voided by CACHE.DEL");
        }
        Expect::Int(removed)
    }

    fn getormark(&mut self, db: usize, key: &str) -> Expect {
        match self.dbs[db].items.get(key) {
            Some(Item { meta: None, .. }) => Expect::Error("WRONGTYPE"),
            Some(item) => Expect::Hit(item.value.clone()),
            None if self.dbs[db].leases.contains_key(key) => Expect::Busy,
            None => Expect::Miss,
        }
    }

    /// The server answered `MISS token`.
    fn granted(&mut self, db: usize, key: &str, token: String) {
        self.dbs[db].leases.insert(
            key.to_string(),
            Lease {
                token,
                fenced: BTreeMap::new(),
            },
        );
    }

    fn fill(&mut self, db: usize, key: &str, token: &str, w: &Write) -> Expect {
        if self.dbs[db].leases.get(key).is_none_or(|l| l.token != token) {
            self.count("FILL with a token that is not current");
            return Expect::Error("LEASE");
        }
        let Some(lease) = self.end_lease(db, key, "lease consumed by CACHE.FILL") else {
            return Expect::Error("LEASE");
        };
        // A fence is per database: INVALIDATETAGS acts on the selected database only.
        let fenced = w.tags.iter().filter_map(|t| lease.fenced.get(t)).any(|dbs| dbs.contains(&db));
        if fenced {
            self.count("FILL refused: a tag invalidated after the grant");
            return Expect::Error("LEASE");
        }
        self.store(db, key, w);
        Expect::Ok
    }

    fn abandon(&mut self, db: usize, key: &str, token: &str) -> Expect {
        if self.dbs[db].leases.get(key).is_some_and(|l| l.token == token) {
            self.end_lease(db, key, "lease released by CACHE.ABANDON");
            Expect::Int(1)
        } else {
            Expect::Int(0)
        }
    }

    fn invalidate(&mut self, db: usize, tenant: &str, pattern: &str) -> Expect {
        let scope = scope_of(tenant);
        let leased: Vec<String> = self.dbs[db]
            .leases
            .keys()
            .filter(|k| glob(pattern.as_bytes(), k.as_bytes()))
            .filter(|k| scope.as_ref().is_none_or(|t| *t == self.tenant_of(db, k)))
            .cloned()
            .collect();
        for k in &leased {
            self.end_lease(db, k, "lease voided by CACHE.INVALIDATE");
        }
        let names = self.entry_names(db, scope.as_deref(), pattern);
        self.remove_entries(db, &names)
    }

    fn invalidate_tags(&mut self, db: usize, tags: &[String]) -> Expect {
        for lease in self.dbs.iter_mut().flat_map(|d| d.leases.values_mut()) {
            for t in tags {
                lease.fenced.entry(t.clone()).or_default().insert(db);
            }
        }
        let names: Vec<String> = self.dbs[db]
            .items
            .iter()
            .filter(|(_, i)| i.meta.as_ref().is_some_and(|m| tags.iter().any(|t| m.tags.contains(t))))
            .map(|(k, _)| k.clone())
            .collect();
        self.remove_entries(db, &names)
    }

    fn keys(&self, db: usize, tenant: &str, pattern: &str, limit: Option<usize>) -> Expect {
        let scope = scope_of(tenant);
        let mut names = self.entry_names(db, scope.as_deref(), pattern);
        names.truncate(limit.unwrap_or(usize::MAX));
        Expect::Names {
            names,
            ordered: scope.is_some(),
        }
    }

    /// CACHE.INSPECT; a replica (`leases` false) knows no leases.
    fn inspect(&self, db: usize, key: &str, leases: bool) -> Expect {
        let lease = leases && self.dbs[db].leases.contains_key(key);
        let bare = View {
            exists: false,
            indexed: false,
            tenant: String::new(),
            explicit: false,
            tags: BTreeSet::new(),
            has_ttl: false,
            lease,
        };
        match self.dbs[db].items.get(key) {
            Some(Item { meta: None, .. }) => Expect::Error("WRONGTYPE"),
            Some(Item {
                has_ttl, meta: Some(m), ..
            }) => Expect::Inspect(View {
                exists: true,
                indexed: true,
                tenant: m.tenant.clone(),
                explicit: m.explicit,
                tags: m.tags.clone(),
                has_ttl: *has_ttl,
                ..bare
            }),
            None if lease => Expect::Inspect(bare),
            None => Expect::Nil,
        }
    }

    fn native_set(&mut self, db: usize, key: &str, value: &str) -> Expect {
        self.dbs[db].items.insert(
            key.to_string(),
            Item {
                value: value.to_string(),
                has_ttl: false,
                meta: None,
            },
        );
        Expect::Ok
    }

    fn del(&mut self, db: usize, keys: &[String]) -> Expect {
        let mut removed = 0;
        for k in keys {
            if self.dbs[db].items.remove(k).is_some() {
                removed += 1;
                self.end_lease(db, k, "lease voided by native DEL/UNLINK");
            }
        }
        Expect::Int(removed)
    }

    /// `item` lands at (db, key), replacing what was there; a lease on that name is void.
    fn arrive(&mut self, db: usize, key: &str, item: &Item, how: &'static str) {
        self.dbs[db].items.insert(key.to_string(), item.arriving_as(key));
        self.end_lease(db, key, how);
    }

    fn rename(&mut self, db: usize, src: &str, dst: &str) -> Expect {
        let Some(item) = self.dbs[db].items.get(src).cloned() else {
            return Expect::Error("ERR no such key");
        };
        if src != dst {
            self.dbs[db].items.remove(src);
            self.arrive(db, dst, &item, "lease voided by RENAME onto the key");
        }
        Expect::Ok
    }

    fn copy(&mut self, db: usize, src: &str, dst: &str, dst_db: usize, replace: bool) -> Expect {
        if db == dst_db && src == dst {
            return Expect::Error("ERR source and destination objects are the same");
        }
        let Some(item) = self.dbs[db].items.get(src).cloned() else {
            return Expect::Int(0);
        };
        if !replace && self.dbs[dst_db].items.contains_key(dst) {
            return Expect::Int(0);
        }
        self.arrive(dst_db, dst, &item, "lease voided by COPY onto the key");
        Expect::Int(1)
    }

    fn move_key(&mut self, db: usize, key: &str) -> Expect {
        let other = 1 - db;
        if self.dbs[other].items.contains_key(key) {
            return Expect::Int(0);
        }
        let Some(item) = self.dbs[db].items.remove(key) else {
            return Expect::Int(0);
        };
        self.arrive(other, key, &item, "lease voided by MOVE onto the key");
        Expect::Int(1)
    }

    fn expire(&mut self, db: usize, key: &str) -> Expect {
        match self.dbs[db].items.get_mut(key) {
            Some(item) => {
                item.has_ttl = true;
                Expect::Int(1)
            }
            None => Expect::Int(0),
        }
    }

    fn persist(&mut self, db: usize, key: &str) -> Expect {
        match self.dbs[db].items.get_mut(key) {
            Some(item) if item.has_ttl => {
                item.has_ttl = false;
                Expect::Int(1)
            }
            _ => Expect::Int(0),
        }
    }

    fn ttl(&self, db: usize, key: &str) -> Expect {
        Expect::Ttl(match self.dbs[db].items.get(key) {
            None => -2,
            Some(item) if !item.has_ttl => -1,
            Some(_) => 1,
        })
    }

    fn key_type(&self, db: usize, key: &str) -> Expect {
        Expect::Status(match self.dbs[db].items.get(key) {
            None => "none",
            Some(Item { meta: None, .. }) => "string",
            Some(_) => "tagcache0",
        })
    }

    fn end_all_leases(&mut self, db: usize, why: &'static str) {
        let keys: Vec<String> = self.dbs[db].leases.keys().cloned().collect();
        for k in keys {
            self.end_lease(db, &k, why);
        }
    }

    fn swapdb(&mut self) -> Expect {
        self.end_all_leases(0, "lease voided by SWAPDB");
        self.end_all_leases(1, "lease voided by SWAPDB");
        self.dbs.swap(0, 1);
        Expect::Ok
    }

    fn flushdb(&mut self, db: usize) -> Expect {
        self.end_all_leases(db, "lease voided by FLUSHDB");
        self.dbs[db].items.clear();
        Expect::Ok
    }
}

// ---------------------------------------------------------------- replies

#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Nil,
    Int(i64),
    Str(String),
    Arr(Vec<Reply>),
    Err(String),
}

fn reply_of(r: redis::RedisResult<Value>) -> Reply {
    fn conv(v: Value) -> Reply {
        match v {
            Value::Nil => Reply::Nil,
            Value::Int(n) => Reply::Int(n),
            Value::BulkString(b) => Reply::Str(String::from_utf8_lossy(&b).into_owned()),
            Value::SimpleString(s) => Reply::Str(s),
            Value::Okay => Reply::Str("OK".into()),
            Value::Array(items) | Value::Set(items) => Reply::Arr(items.into_iter().map(conv).collect()),
            other => Reply::Err(format!("unexpected reply type: {other:?}")),
        }
    }
    match r {
        Ok(v) => conv(v),
        Err(e) => Reply::Err(error_text(&e)),
    }
}

fn view_of(json: &str) -> Result<View, String> {
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("bad INSPECT json {json}: {e}"))?;
    let text = |f: &str| doc[f].as_str().unwrap_or_default().to_string();
    Ok(View {
        exists: doc["exists"] == true,
        indexed: doc["indexed"] == true,
        tenant: text("tenant"),
        explicit: doc["tenant_explicit"] == true,
        tags: doc["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .map(String::from)
            .collect(),
        has_ttl: doc["ttl_ms"].as_i64().is_some_and(|t| t > 0),
        lease: doc["lease"]["active"] == true,
    })
}

impl Expect {
    /// Ok, or why `got` is not what was predicted.
    fn check(&self, got: &Reply) -> Result<(), String> {
        let ok = match (self, got) {
            (Expect::Ok, Reply::Str(s)) => s == "OK",
            (Expect::Int(n), Reply::Int(m)) => n == m,
            (Expect::Nil, Reply::Nil) => true,
            (Expect::Bulk(v), Reply::Str(s)) => v == s,
            (Expect::Error(prefix), Reply::Err(e)) => e.starts_with(prefix),
            (Expect::Status(v), Reply::Str(s)) => v == s,
            (Expect::Ttl(t), Reply::Int(n)) => {
                if *t > 0 {
                    *n > 0
                } else {
                    t == n
                }
            }
            (Expect::Names { names, ordered }, Reply::Arr(items)) => {
                let got: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
                let names: Vec<String> = names.iter().map(|n| format!("{:?}", Reply::Str(n.clone()))).collect();
                let mut sorted = got.clone();
                sorted.sort();
                sorted.dedup();
                (if *ordered { &got } else { &sorted }) == &names && sorted.len() == got.len()
            }
            (Expect::Hit(v), Reply::Arr(items)) => items == &[Reply::Str("HIT".into()), Reply::Str(v.clone())],
            (Expect::Miss, Reply::Arr(items)) => {
                matches!(items.as_slice(), [Reply::Str(m), Reply::Str(_)] if m == "MISS")
            }
            (Expect::Busy, Reply::Arr(items)) => {
                matches!(items.as_slice(), [Reply::Str(b), Reply::Int(ms)] if b == "BUSY" && (1..=1000).contains(ms))
            }
            (Expect::Inspect(view), Reply::Str(json)) => {
                let got = view_of(json)?;
                if &got != view {
                    return Err(format!("expected {view:?}, got {got:?} ({json})"));
                }
                true
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {self:?}, got {got:?}"))
        }
    }

    /// The reply's shape, for the per-seed coverage line.
    fn label(&self) -> &'static str {
        match self {
            Expect::Ok => "OK",
            Expect::Int(0) => "0",
            Expect::Int(_) => ">0",
            Expect::Nil => "nil",
            Expect::Bulk(_) => "value",
            Expect::Error(e) => e.split(' ').next().unwrap_or(e),
            Expect::Names { names, .. } if names.is_empty() => "[]",
            Expect::Names { .. } => "[names]",
            Expect::Hit(_) => "HIT",
            Expect::Miss => "MISS",
            Expect::Busy => "BUSY",
            Expect::Ttl(_) | Expect::Status(_) | Expect::Inspect(_) => "",
        }
    }
}

// ---------------------------------------------------------------- the workload

struct Gen {
    rng: StdRng,
    keys: Vec<String>,
    step: usize,
}

type Maker = fn(&mut Gen, &Model, usize) -> Op;

/// One element, uniformly (`from` is never empty where this is called).
fn choose<T: Clone>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.gen_range(0..from.len())].clone()
}

/// How often each operation is drawn (per mille).
const MIX: [(u32, Maker); 21] = [
    (190, Gen::set),
    (110, Gen::get),
    (45, Gen::cache_del),
    (90, Gen::getormark),
    (75, Gen::fill),
    (25, Gen::abandon),
    (40, Gen::invalidate),
    (30, Gen::invalidate_tags),
    (50, Gen::keys),
    (40, Gen::inspect),
    (15, Gen::native_set),
    (40, Gen::del),
    (35, Gen::rename),
    (30, Gen::copy),
    (30, Gen::move_key),
    (25, Gen::expire),
    (20, Gen::persist),
    (15, Gen::ttl),
    (10, Gen::key_type),
    (6, Gen::swapdb),
    (1, Gen::flushdb),
];

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            keys: universe(),
            step: 0,
        }
    }

    fn next(&mut self, model: &Model) -> Op {
        self.step += 1;
        let db = usize::from(self.rng.gen_bool(0.25));
        let total: u32 = MIX.iter().map(|(w, _)| w).sum();
        let mut roll = self.rng.gen_range(0..total);
        for (weight, make) in MIX {
            if roll < weight {
                return make(self, model, db);
            }
            roll -= weight;
        }
        unreachable!("roll within the total weight")
    }

    fn pick(&mut self, from: &[&str]) -> String {
        choose(&mut self.rng, from).to_string()
    }

    fn key(&mut self) -> String {
        choose(&mut self.rng, &self.keys)
    }

    /// A key that does not hold a lease without a value. Native DEL/UNLINK/SET of such a key is
    /// left out: the key does not exist, so no keyspace event or unlink callback reaches the
    /// module, and the README does not say whether those commands void the lease.
    fn key_without_bare_lease(&mut self, model: &Model, db: usize) -> Option<String> {
        let d = &model.dbs[db];
        let free: Vec<&String> = self
            .keys
            .iter()
            .filter(|k| !d.leases.contains_key(*k) || d.items.contains_key(*k))
            .collect();
        (!free.is_empty()).then(|| choose(&mut self.rng, &free).clone())
    }

    /// Mostly a key that holds something in `db`, so that RENAME, COPY, MOVE, EXPIRE and
    /// PERSIST usually act.
    fn existing_key(&mut self, model: &Model, db: usize) -> String {
        let items = &model.dbs[db].items;
        if items.is_empty() || self.rng.gen_bool(0.3) {
            return self.key();
        }
        items
            .keys()
            .nth(self.rng.gen_range(0..items.len()))
            .cloned()
            .unwrap_or_default()
    }

    /// A destination for RENAME/COPY: often a key leased without a value, whose lease the
    /// arrival must void.
    fn target_key(&mut self, model: &Model, db: usize) -> String {
        let d = &model.dbs[db];
        let bare: Vec<&String> = d.leases.keys().filter(|k| !d.items.contains_key(*k)).collect();
        if bare.is_empty() || self.rng.gen_bool(0.7) {
            return self.key();
        }
        choose(&mut self.rng, &bare).clone()
    }

    fn some_keys(&mut self) -> Vec<String> {
        let n = self.rng.gen_range(1..=3);
        (0..n).map(|_| self.key()).collect()
    }

    fn write(&mut self, kind: &str) -> Write {
        let ttl = match self.rng.gen_range(0..4) {
            0 => Ttl::Default,
            1 => Ttl::Ex(self.rng.gen_range(100_000..200_000)),
            2 => Ttl::Px(self.rng.gen_range(100_000_000..200_000_000)),
            _ => Ttl::NoExpire,
        };
        let tags = (0..self.rng.gen_range(0..=3)).map(|_| self.pick(&TAG_POOL)).collect();
        let tenant = self.rng.gen_bool(0.2).then(|| self.pick(&TENANT_OPTIONS));
        Write {
            value: format!("{kind}{}", self.step),
            ttl,
            tags,
            tenant,
        }
    }

    fn set(&mut self, _: &Model, db: usize) -> Op {
        Op::Set {
            db,
            key: self.key(),
            w: self.write("v"),
        }
    }

    fn get(&mut self, _: &Model, db: usize) -> Op {
        Op::Get { db, key: self.key() }
    }

    fn cache_del(&mut self, _: &Model, db: usize) -> Op {
        Op::CacheDel {
            db,
            keys: self.some_keys(),
        }
    }

    fn getormark(&mut self, _: &Model, db: usize) -> Op {
        Op::GetOrMark { db, key: self.key() }
    }

    /// A token for FILL/ABANDON: mostly a live lease, else one that is over, else made up.
    fn token(&mut self, model: &Model, db: usize) -> (usize, String, String) {
        let live: Vec<(usize, &String, &Lease)> = (0..2)
            .flat_map(|d| model.dbs[d].leases.iter().map(move |(k, l)| (d, k, l)))
            .collect();
        if !live.is_empty() && self.rng.gen_bool(0.75) {
            let (d, k, l) = choose(&mut self.rng, &live);
            // Now and then in the wrong database: leases are per database.
            let d = if self.rng.gen_bool(0.1) { 1 - d } else { d };
            return (d, k.clone(), l.token.clone());
        }
        if !model.old_tokens.is_empty() && self.rng.gen_bool(0.7) {
            return choose(&mut self.rng, &model.old_tokens);
        }
        (db, self.key(), "0-0".to_string())
    }

    fn fill(&mut self, model: &Model, db: usize) -> Op {
        let (db, key, token) = self.token(model, db);
        Op::Fill {
            db,
            key,
            token,
            w: self.write("f"),
        }
    }

    fn abandon(&mut self, model: &Model, db: usize) -> Op {
        let (db, key, token) = self.token(model, db);
        Op::Abandon { db, key, token }
    }

    fn invalidate(&mut self, _: &Model, db: usize) -> Op {
        Op::Invalidate {
            db,
            tenant: self.pick(&TENANT_ARGS),
            pattern: self.pick(&PATTERNS),
        }
    }

    fn invalidate_tags(&mut self, _: &Model, db: usize) -> Op {
        let n = self.rng.gen_range(1..=2);
        Op::InvalidateTags {
            db,
            tags: (0..n).map(|_| self.pick(&TAG_POOL)).collect(),
        }
    }

    fn keys(&mut self, _: &Model, db: usize) -> Op {
        let tenant = self.pick(&TENANT_ARGS);
        // LIMIT only for one tenant: across tenants the README does not say which names come first.
        let limit = (tenant != "*" && self.rng.gen_bool(0.3)).then(|| self.rng.gen_range(1..=4));
        Op::Keys {
            db,
            tenant,
            pattern: self.pick(&PATTERNS),
            limit,
        }
    }

    fn inspect(&mut self, _: &Model, db: usize) -> Op {
        Op::Inspect { db, key: self.key() }
    }

    fn native_set(&mut self, model: &Model, db: usize) -> Op {
        match self.key_without_bare_lease(model, db) {
            Some(key) => Op::NativeSet {
                db,
                key,
                value: format!("s{}", self.step),
            },
            None => self.key_type(model, db),
        }
    }

    fn del(&mut self, model: &Model, db: usize) -> Op {
        let keys: Vec<String> = (0..self.rng.gen_range(1..=3))
            .filter_map(|_| self.key_without_bare_lease(model, db))
            .collect();
        if keys.is_empty() {
            return self.key_type(model, db);
        }
        Op::Del {
            db,
            keys,
            unlink: self.rng.gen_bool(0.4),
        }
    }

    fn rename(&mut self, model: &Model, db: usize) -> Op {
        Op::Rename {
            db,
            src: self.existing_key(model, db),
            dst: self.target_key(model, db),
        }
    }

    fn copy(&mut self, model: &Model, db: usize) -> Op {
        let dst_db = if self.rng.gen_bool(0.3) { 1 - db } else { db };
        Op::Copy {
            db,
            src: self.existing_key(model, db),
            dst: self.target_key(model, dst_db),
            dst_db,
            replace: self.rng.gen_bool(0.5),
        }
    }

    fn move_key(&mut self, model: &Model, db: usize) -> Op {
        // Sometimes a key whose name is leased without a value in the other database.
        let onto_lease: Vec<&String> = model.dbs[db]
            .items
            .keys()
            .filter(|k| model.dbs[1 - db].leases.contains_key(*k))
            .collect();
        if !onto_lease.is_empty() && self.rng.gen_bool(0.5) {
            let key = choose(&mut self.rng, &onto_lease).clone();
            return Op::Move { db, key };
        }
        Op::Move {
            db,
            key: self.existing_key(model, db),
        }
    }

    fn expire(&mut self, model: &Model, db: usize) -> Op {
        Op::Expire {
            db,
            key: self.existing_key(model, db),
            secs: self.rng.gen_range(100_000..200_000),
        }
    }

    fn persist(&mut self, model: &Model, db: usize) -> Op {
        Op::Persist {
            db,
            key: self.existing_key(model, db),
        }
    }

    fn ttl(&mut self, _: &Model, db: usize) -> Op {
        Op::Ttl { db, key: self.key() }
    }

    fn key_type(&mut self, _: &Model, db: usize) -> Op {
        Op::Type { db, key: self.key() }
    }

    fn swapdb(&mut self, _: &Model, _: usize) -> Op {
        Op::SwapDb
    }

    fn flushdb(&mut self, _: &Model, db: usize) -> Op {
        Op::FlushDb { db }
    }
}

// ---------------------------------------------------------------- the runner

/// Connections to db 0 and db 1 of one server, and what is needed to report a failure.
struct Runner {
    conns: [Connection; 2],
    name: &'static str,
    seed: u64,
    step: usize,
    history: VecDeque<String>,
    /// What is being checked besides the reply of the step's own command, if anything.
    context: String,
}

impl Runner {
    fn new(server: &Server, name: &'static str, seed: u64) -> Runner {
        let mut db1 = server.conn();
        let _: () = redis::cmd("SELECT").arg(1).query(&mut db1).expect("SELECT 1");
        Runner {
            conns: [server.conn(), db1],
            name,
            seed,
            step: 0,
            history: VecDeque::new(),
            context: String::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let history: Vec<&str> = self.history.iter().map(String::as_str).collect();
        panic!(
            "{} seed {:#x} step {}: {what}{}\nlast commands, oldest first:\n  {}\nrerun: TAGCACHE_MODEL_SEED={:#x} cargo test --test model",
            self.name,
            self.seed,
            self.step,
            self.context,
            history.join("\n  "),
            self.seed
        );
    }

    fn send(&mut self, db: usize, args: &[String]) -> Reply {
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a.as_bytes());
        }
        reply_of(cmd.query(&mut self.conns[db]))
    }

    /// Sends a command and compares the reply with the prediction.
    fn expect(&mut self, db: usize, args: &[String], expected: &Expect) -> Reply {
        let line = format!("[db{db}] {}", args.join(" "));
        self.history.push_back(line.clone());
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let got = self.send(db, args);
        if let Err(why) = expected.check(&got) {
            self.fail(format!("{line}: {why}"));
        }
        got
    }

    fn run(&mut self, model: &mut Model, op: &Op) -> Expect {
        let expected = model.apply(op);
        let got = self.expect(op.db(), &op.args(), &expected);
        if let (Op::GetOrMark { db, key }, Reply::Arr(items)) = (op, &got) {
            if let [Reply::Str(kind), Reply::Str(token)] = items.as_slice() {
                if kind == "MISS" {
                    model.granted(*db, key, token.clone());
                }
            }
        }
        // A lease the model just ended must be gone on the server now, not only at its next use
        // (and not moved to the other database).
        let voided: BTreeSet<String> = model.voided_now.drain(..).map(|(_, key)| key).collect();
        self.context = format!("\n(checking a lease the model ended at `{}`)", op.args().join(" "));
        for (db, key) in (0..2).flat_map(|db| voided.iter().map(move |k| (db, k))) {
            if model.dbs[db].items.get(key).is_none_or(|i| i.meta.is_some()) {
                let predicted = model.inspect(db, key, true);
                self.expect(db, &["CACHE.INSPECT".to_string(), key.clone()], &predicted);
            }
        }
        self.context.clear();
        expected
    }

    /// Waits until a replica has acknowledged every write made on these connections. WAIT
    /// waits for the offset of the calling connection's own last write: a WAIT sent on a fresh
    /// connection (as `Server::wait_replicated` does) returns at once, whatever the replica has.
    fn wait_replicated(&mut self) {
        for c in &mut self.conns {
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(c).expect("WAIT");
            assert_eq!(
                acked, 1,
                "seed {:#x}: the replica did not acknowledge the workload",
                self.seed
            );
        }
    }

    /// Compares the server's whole state with the model. A replica (`leases` false) has none.
    fn verify(&mut self, model: &Model, leases: bool) {
        let s = |v: &str| v.to_string();
        self.context = "\n(comparing the whole state with the model)".to_string();
        self.expect(0, &[s("CACHE.DEBUG"), s("INDEXCHECK")], &Expect::Status("OK"));
        for db in 0..2 {
            self.expect(db, &[s("DBSIZE")], &Expect::Int(model.dbs[db].items.len() as i64));
            for tenant in TENANTS.iter().chain(&["*"]) {
                let predicted = model.keys(db, tenant, "*", None);
                self.expect(db, &[s("CACHE.KEYS"), s(tenant), s("*")], &predicted);
            }
            for key in universe() {
                let predicted = model.inspect(db, &key, leases);
                self.expect(db, &[s("CACHE.INSPECT"), key.clone()], &predicted);
                let predicted = model.get(db, &key);
                self.expect(db, &[s("CACHE.GET"), key], &predicted);
            }
        }
        self.context.clear();
    }
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("TAGCACHE_MODEL_SEED") {
        Ok(s) => {
            let parsed = s
                .strip_prefix("0x")
                .map_or_else(|| s.parse(), |hex| u64::from_str_radix(hex, 16));
            vec![parsed.expect("TAGCACHE_MODEL_SEED: a number (decimal or 0x hex)")]
        }
        Err(_) => default.to_vec(),
    }
}

fn steps() -> usize {
    std::env::var("TAGCACHE_MODEL_STEPS").map_or(STEPS, |s| s.parse().expect("TAGCACHE_MODEL_STEPS: a number"))
}

/// Runs one seed's workload on `server`, checking every reply; returns the final model and the
/// connections that wrote (to WAIT on).
fn run_workload(server: &Server, name: &'static str, seed: u64) -> (Model, Runner) {
    let mut model = Model::default();
    let mut gen = Gen::new(seed);
    let mut runner = Runner::new(server, name, seed);
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    for step in 1..=steps() {
        runner.step = step;
        let op = gen.next(&model);
        let expected = runner.run(&mut model, &op);
        *replies
            .entry(format!("{} {}", op.args()[0], expected.label()))
            .or_default() += 1;
        if step % CHECK_EVERY == 0 {
            runner.verify(&model, true);
        }
    }
    runner.verify(&model, true);
    eprintln!(
        "{name} seed {seed:#x}: {} steps\n  replies: {replies:?}\n  lease paths: {:?}",
        steps(),
        model.coverage
    );
    (model, runner)
}

#[test]
fn random_workload_matches_the_model_step_by_step() {
    for seed in seeds(&SEEDS) {
        let server = Server::start();
        run_workload(&server, "model", seed);
    }
}

#[test]
fn random_workload_on_a_primary_replicates_exactly() {
    for seed in seeds(&REPLICATED_SEEDS) {
        // No 5 s wait for more replicas before the full sync.
        let primary = Server::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = primary.replica();
        let (model, mut writer) = run_workload(&primary, "primary", seed);
        writer.wait_replicated();
        primary.wait_replicated(&replica);
        let mut check = Runner::new(&replica, "replica", seed);
        check.step = steps();
        check.verify(&model, false);
        let digest = |s: &Server| -> String {
            let mut c = s.conn();
            redis::cmd("DEBUG").arg("DIGEST").query(&mut c).expect("DEBUG DIGEST")
        };
        assert_eq!(
            digest(&primary),
            digest(&replica),
            "seed {seed:#x}: DEBUG DIGEST differs between primary and replica"
        );
    }
}
