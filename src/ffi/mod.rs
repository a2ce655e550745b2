//! The one layer that talks to Redis through raw module API pointers. Every `unsafe` block and
//! every `extern "C"` callback of the module lives here, each with a SAFETY note; the rest of
//! the crate denies `unsafe_code` and calls the safe wrappers below.
// The raw pointers taken by these functions are handles Redis passes to commands and callbacks.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

/// Reads a Redis module API function pointer (a `static mut` filled by Redis at load time).
macro_rules! api {
    ($name:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: written once by RedisModule_Init before any command or callback runs.
        let f = unsafe { redis_module::raw::$name };
        f
    }};
}

pub mod acl;
pub mod blocking;
pub mod command_info;
pub mod datatype;
pub mod events;
pub mod filter;
pub mod gate;
pub mod keyspace;
pub mod notify;
pub mod replicate;
pub mod reply;
pub mod strings;
pub mod thin;
