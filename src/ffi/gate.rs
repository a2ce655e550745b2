//! Refuses to load on servers older than Redis 7.0 before anything is registered: the crate's
//! config registration would otherwise abort the whole server there (6.2 lacks the config API).

use redis_module::raw;

/// Oldest supported server: 7.0.0, encoded as `RedisModule_GetServerVersion` does (0x00MMmmpp).
pub const MIN_SERVER_VERSION: i32 = 0x0007_0000;

/// `major.minor.patch` of an encoded server version.
pub fn version_text(encoded: i32) -> String {
    format!("{}.{}.{}", (encoded >> 16) & 0xff, (encoded >> 8) & 0xff, encoded & 0xff)
}

/// Listed first among the module's data types so that the registration macro runs it before
/// creating anything else; an `Err` makes `OnLoad` fail cleanly (MODULE LOAD answers an error,
/// the server keeps running).
pub struct ServerGate;

pub static SERVER_GATE: ServerGate = ServerGate;

impl ServerGate {
    // The pointer is the OnLoad context Redis passes to the registration macro.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn create_data_type(&self, ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
        let version = api!(RedisModule_GetServerVersion).map(|f| {
            // SAFETY: a plain getter, available once RedisModule_Init has run.
            unsafe { f() }
        });
        match version {
            Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
            found => {
                let found = found.map_or_else(|| "unknown".to_string(), version_text);
                let message = format!(
                    "tagcache requires Redis 7.0 or newer (or Valkey 7.2+); this server is {found}: the module is not loaded"
                );
                if let (Some(log), Ok(level), Ok(text)) = (
                    api!(RedisModule_Log),
                    std::ffi::CString::new("warning"),
                    std::ffi::CString::new(message),
                ) {
                    // SAFETY: ctx is the OnLoad context; both strings live for the call.
                    unsafe { log(ctx, level.as_ptr(), text.as_ptr()) };
                }
                Err("unsupported server version")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_encoding() {
        assert_eq!(version_text(0x0006_0205), "6.2.5");
        assert_eq!(version_text(MIN_SERVER_VERSION), "7.0.0");
        let (redis_7_0_15, redis_6_2_5) = (0x0007_000f, 0x0006_0205);
        assert!(std::hint::black_box(redis_7_0_15) >= MIN_SERVER_VERSION);
        assert!(std::hint::black_box(redis_6_2_5) < MIN_SERVER_VERSION);
    }
}
