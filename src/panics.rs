//! Panics inside GPU libraries, contained. cudarc and tract-cuda panic on some failures (a context or stream
//! that cannot be created, a missing header at kernel compile time) instead of returning an error. The runtime
//! calls them through `contain`, which turns such a panic into an error for the caller to fall back from.
//!
//! A panic anywhere else still means the process cannot be trusted: the relay's panic hook latches the door in
//! its fault state (ARCHITECTURE.md, invariant 12). The hook asks `contained` first, so that a library panic
//! the runtime recovers from does not lock the door until a restart.

use anyhow::{anyhow, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside `contain`: a panic now is caught and becomes an error.
pub fn contained() -> bool {
    DEPTH.with(|depth| depth.get() > 0)
}

/// Runs `work`; a panic inside it becomes an error saying `what` panicked and its message. Only for calls into
/// libraries whose state the caller drops on error (the GPU path, a GPU model plan): nothing they touched is
/// used again.
pub fn contain<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }
    DEPTH.with(|depth| depth.set(depth.get() + 1));
    let caught = {
        let _leave = Leave;
        catch_unwind(AssertUnwindSafe(work))
    };
    caught.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(anyhow!("{what} panicked: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_thread_is_no_longer_contained() {
        assert!(!contained());
        let inside = contain("the library", || Ok(contained())).unwrap();
        assert!(inside);
        let error = contain::<()>("the library", || panic!("no stream")).unwrap_err();
        assert_eq!(format!("{error}"), "the library panicked: no stream");
        let error = contain::<()>("it", || Err(anyhow!("plain error"))).unwrap_err();
        assert_eq!(format!("{error}"), "plain error");
        assert!(!contained(), "left after a panic and after an error");
        let nested =
            contain("outer", || contain("inner", || Ok(contained())).map(|inner| inner && contained()));
        assert!(nested.unwrap());
        assert!(!contained());
    }
}
