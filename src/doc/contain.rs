//! Containment of panics inside the Automerge engine.
//!
//! Fuzzing found that automerge 0.12 (through its `hexane` columnar decoder) can panic on
//! crafted bytes instead of returning an error. Every parse of bytes from outside this process
//! therefore runs inside [`contained`]: a panic becomes [`DocError::Damaged`], the half-built
//! document is dropped, and the panic is not printed (a chained hook stays quiet only for
//! contained panics on this thread, so every other panic still reports as usual).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use super::DocError;

thread_local! {
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic inside it into `DocError::Damaged`. Whatever `f` was building must
/// be discarded on that error: the caller only ever gets a value from a run that returned.
pub(super) fn contained<T>(f: impl FnOnce() -> Result<T, DocError>) -> Result<T, DocError> {
    install_quiet_hook();
    let was = CONTAINING.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(was));
    result.unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the document engine failed on these bytes".into());
        Err(DocError::Damaged(format!(
            "unreadable document data ({detail})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_damaged_and_later_panics_still_report() {
        let err = contained::<()>(|| panic!("boom")).unwrap_err();
        assert!(
            matches!(err, DocError::Damaged(ref m) if m.contains("boom")),
            "{err}"
        );
        assert!(!CONTAINING.with(Cell::get));
        assert_eq!(contained(|| Ok(7)).unwrap(), 7);
    }
}
