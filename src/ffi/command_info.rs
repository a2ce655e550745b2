//! Command metadata (`RedisModule_SetCommandInfo`, a 7.0 API): summary, complexity, arity, key
//! specs with their access flags, and arguments. Without it every keyed module command gets a
//! legacy `RW access update` key spec, so ACL users with read-only key permissions (`%R~…`)
//! would be refused reads, and COMMAND DOCS would be empty.

use redis_module::{raw, Context};
use std::ffi::{c_char, c_int, CString};

/// How a command touches its key argument(s).
#[derive(Debug, Clone, Copy)]
pub enum KeyAccess {
    /// Reads the value (CACHE.GET, CACHE.KEYS).
    Read,
    /// Reads metadata only (CACHE.INSPECT).
    Inspect,
    /// Overwrites the value without reading it (CACHE.SET, CACHE.FILL).
    Overwrite,
    /// Reads and updates (CACHE.GETORMARK: reads, takes a lease).
    ReadUpdate,
    /// Updates without reading (CACHE.ABANDON).
    Update,
    /// Deletes (CACHE.DEL).
    Delete,
}

impl KeyAccess {
    fn flags(self) -> u64 {
        use raw::*;
        let f = match self {
            KeyAccess::Read => REDISMODULE_CMD_KEY_RO | REDISMODULE_CMD_KEY_ACCESS,
            KeyAccess::Inspect => REDISMODULE_CMD_KEY_RO,
            KeyAccess::Overwrite => REDISMODULE_CMD_KEY_OW | REDISMODULE_CMD_KEY_UPDATE,
            KeyAccess::ReadUpdate => REDISMODULE_CMD_KEY_RW | REDISMODULE_CMD_KEY_ACCESS | REDISMODULE_CMD_KEY_UPDATE,
            KeyAccess::Update => REDISMODULE_CMD_KEY_RW | REDISMODULE_CMD_KEY_UPDATE,
            KeyAccess::Delete => REDISMODULE_CMD_KEY_RM | REDISMODULE_CMD_KEY_DELETE,
        };
        u64::from(f)
    }

    /// The flags a `getkeys-api` command reports for its tenant argument.
    pub fn key_flags(self) -> c_int {
        c_int::try_from(self.flags()).unwrap_or(0)
    }
}

/// The key argument of a command.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub access: KeyAccess,
    /// Last key position relative to the first: 0 = one key, -1 = every remaining argument.
    pub last: i32,
    /// The tenant of CACHE.KEYS / CACHE.INVALIDATE: a key unless it is `*`, so the module's
    /// getkeys callback decides (VARIABLE_FLAGS makes Redis ask it).
    pub tenant: bool,
}

/// One argument as COMMAND DOCS shows it.
#[derive(Debug, Clone)]
pub struct Arg {
    name: &'static str,
    kind: raw::RedisModuleCommandArgType,
    token: Option<&'static str>,
    optional: bool,
    multiple: bool,
    subargs: Vec<Arg>,
}

fn arg(name: &'static str, kind: raw::RedisModuleCommandArgType) -> Arg {
    Arg { name, kind, token: None, optional: false, multiple: false, subargs: Vec::new() }
}

pub fn key(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY)
}
pub fn string(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING)
}
pub fn integer(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER)
}
pub fn double(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_DOUBLE)
}
pub fn pattern(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PATTERN)
}
pub fn unix_time(name: &'static str) -> Arg {
    arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_UNIX_TIME)
}
/// A keyword standing alone (`NOEXPIRE`, `SOFT`).
pub fn flag(token: &'static str) -> Arg {
    let mut a = arg(token, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN);
    a.token = Some(token);
    a
}
pub fn one_of(name: &'static str, subargs: Vec<Arg>) -> Arg {
    let mut a = arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_ONEOF);
    a.subargs = subargs;
    a
}
pub fn block(name: &'static str, subargs: Vec<Arg>) -> Arg {
    let mut a = arg(name, raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_BLOCK);
    a.subargs = subargs;
    a
}

impl Arg {
    pub fn token(mut self, token: &'static str) -> Arg {
        self.token = Some(token);
        self
    }
    pub fn optional(mut self) -> Arg {
        self.optional = true;
        self
    }
    pub fn multiple(mut self) -> Arg {
        self.multiple = true;
        self
    }
}

/// Everything COMMAND INFO / COMMAND DOCS says about one command.
#[derive(Debug, Clone)]
pub struct Doc {
    pub name: &'static str,
    pub summary: &'static str,
    pub complexity: &'static str,
    pub arity: i32,
    pub keys: Option<KeySpec>,
    pub args: Vec<Arg>,
}

/// Version this module's commands appeared in (COMMAND DOCS `since`).
const SINCE: &str = "0.1.0";

/// C copies of the strings and arrays of one `RedisModuleCommandInfo`, alive for the call
/// (Redis copies what it keeps).
#[derive(Default)]
struct Storage {
    strings: Vec<CString>,
    arg_arrays: Vec<Vec<raw::RedisModuleCommandArg>>,
}

impl Storage {
    fn c(&mut self, text: &str) -> *const c_char {
        match CString::new(text) {
            Ok(s) => {
                let ptr = s.as_ptr();
                self.strings.push(s);
                ptr
            }
            Err(_) => std::ptr::null(),
        }
    }

    /// A NULL-terminated array of C arguments; the returned pointer stays valid while `self`
    /// lives (each array's heap buffer never moves once built).
    fn args(&mut self, args: &[Arg]) -> *mut raw::RedisModuleCommandArg {
        let mut out: Vec<raw::RedisModuleCommandArg> = Vec::with_capacity(args.len().saturating_add(1));
        for a in args {
            let subargs = if a.subargs.is_empty() { std::ptr::null_mut() } else { self.args(&a.subargs) };
            let mut flags = raw::REDISMODULE_CMD_ARG_NONE;
            if a.optional {
                flags |= raw::REDISMODULE_CMD_ARG_OPTIONAL;
            }
            if a.multiple {
                flags |= raw::REDISMODULE_CMD_ARG_MULTIPLE;
            }
            let is_key = a.kind == raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY;
            out.push(raw::RedisModuleCommandArg {
                name: self.c(a.name),
                type_: a.kind,
                key_spec_index: if is_key { 0 } else { -1 },
                token: a.token.map_or(std::ptr::null(), |t| self.c(t)),
                summary: std::ptr::null(),
                since: std::ptr::null(),
                flags: c_int::try_from(flags).unwrap_or(0),
                deprecated_since: std::ptr::null(),
                subargs,
                display_text: std::ptr::null(),
            });
        }
        out.push(terminator_arg());
        let ptr = out.as_mut_ptr();
        self.arg_arrays.push(out);
        ptr
    }
}

fn terminator_arg() -> raw::RedisModuleCommandArg {
    raw::RedisModuleCommandArg {
        name: std::ptr::null(),
        type_: 0,
        key_spec_index: 0,
        token: std::ptr::null(),
        summary: std::ptr::null(),
        since: std::ptr::null(),
        flags: 0,
        deprecated_since: std::ptr::null(),
        subargs: std::ptr::null_mut(),
        display_text: std::ptr::null(),
    }
}

fn key_spec(spec: Option<KeySpec>) -> raw::RedisModuleCommandKeySpec {
    let (flags, begin, last) = match spec {
        Some(s) => {
            let variable = if s.tenant { u64::from(raw::REDISMODULE_CMD_KEY_VARIABLE_FLAGS) } else { 0 };
            (s.access.flags() | variable, raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX, s.last)
        }
        // The array terminator: begin_search_type 0.
        None => (0, 0, 0),
    };
    raw::RedisModuleCommandKeySpec {
        notes: std::ptr::null(),
        flags,
        begin_search_type: begin,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 { lastkey: last, keystep: 1, limit: 0 },
        },
    }
}

/// Registers the metadata of every documented command; false (and a log line) on failure.
pub fn register(ctx: &Context, docs: &[Doc]) -> bool {
    let (Some(get_command), Some(set_info)) = (api!(RedisModule_GetCommand), api!(RedisModule_SetCommandInfo)) else {
        ctx.log_warning("tagcache: this server cannot describe module commands (RedisModule_SetCommandInfo)");
        return false;
    };
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    docs.iter().all(|doc| {
        let mut store = Storage::default();
        let mut specs = [key_spec(doc.keys), key_spec(None)];
        let info = raw::RedisModuleCommandInfo {
            version: &version,
            summary: store.c(doc.summary),
            complexity: store.c(doc.complexity),
            since: store.c(SINCE),
            history: std::ptr::null_mut(),
            tips: std::ptr::null(),
            arity: doc.arity,
            key_specs: if doc.keys.is_some() { specs.as_mut_ptr() } else { std::ptr::null_mut() },
            args: store.args(&doc.args),
        };
        let name = store.c(doc.name);
        // SAFETY: ctx is the OnLoad context and name a live C string; the command was
        // registered earlier in OnLoad.
        let command = unsafe { get_command(ctx.ctx, name) };
        // SAFETY: `info` and everything it points to (store, specs, version) live until the
        // call returns; Redis copies what it keeps.
        let ok = !command.is_null() && unsafe { set_info(command, &info) } == raw::REDISMODULE_OK as c_int;
        if !ok {
            ctx.log_warning(&format!("tagcache: could not register the command info of {}", doc.name));
        }
        ok
    })
}

/// When Redis asks a `getkeys-api` command for its key positions (cluster routing, ACL):
/// reports argument 1 as a key accessed as `access` when `tenant_is_key`, and returns true.
/// False when this is an ordinary call.
pub fn answer_key_positions(ctx: &Context, tenant_is_key: bool, access: KeyAccess) -> bool {
    let (Some(is_request), Some(key_at)) = (api!(RedisModule_IsKeysPositionRequest), api!(RedisModule_KeyAtPosWithFlags)) else {
        return false;
    };
    // SAFETY: plain calls on the command's context.
    if unsafe { is_request(ctx.ctx) } == 0 {
        return false;
    }
    if tenant_is_key {
        // SAFETY: position 1 exists (the caller checked the argument).
        unsafe { key_at(ctx.ctx, 1, access.key_flags()) };
    }
    true
}
