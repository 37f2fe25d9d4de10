//! A thread of its own around one epoll set, started on first use and never stopped:
//! the shape both the reaper (`exit.rs`) and the log pump (`pump.rs`) have. One thread
//! for all the containers, where each container used to have threads of its own.

use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags};

/// The one `T` of a process, made and set running on first use (see the module docs).
pub(crate) struct EpollThread<T>(Mutex<Option<Arc<T>>>);

impl<T: Send + Sync + 'static> EpollThread<T> {
    /// Not started yet (`const`, for a `static`).
    pub(crate) const fn new() -> Self {
        EpollThread(Mutex::new(None))
    }

    /// The running `T`. The first call makes it around a new epoll set (`make`) and
    /// runs `run` on a thread called `name` with a stack of `stack` bytes: these
    /// threads only wait on their set and copy or reap, so a small stack is plenty.
    pub(crate) fn get(
        &self,
        name: &str,
        stack: usize,
        make: impl FnOnce(Epoll) -> T,
        run: fn(&T),
    ) -> std::io::Result<Arc<T>> {
        let mut started = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = started.as_ref() {
            return Ok(t.clone());
        }
        let t = Arc::new(make(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?));
        let runs = t.clone();
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(stack)
            .spawn(move || run(&runs))?;
        *started = Some(t.clone());
        Ok(t)
    }
}
