//! Waiting for the disk inside an actor.

/// Runs `wait`, a call that may block on the disk (a journal or store
/// flush syncs a file), without holding up the other tasks of the runtime
/// worker it runs on: on a multi-threaded tokio runtime they move to
/// another worker meanwhile, so the cluster's connections keep reading
/// while an actor waits for its flush. A current-thread runtime has no
/// other worker; there it is a plain call.
pub(crate) fn disk_wait<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
