//! An engine object shared by Python threads. Its methods release the GIL while they compute,
//! so a second thread can call into the same object meanwhile; PyO3's borrow flag would then
//! raise a bare `RuntimeError: Already borrowed`. Instead the object sits behind a mutex and a
//! second call waits its turn, with the GIL released so that the first call can finish.

use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

pub struct Exclusive<T>(Mutex<T>);

impl<T: Send> Exclusive<T> {
    pub fn new(value: T) -> Self {
        Exclusive(Mutex::new(value))
    }

    /// The object, once no other thread uses it. Never blocks while holding the GIL: the
    /// holder may need the GIL to finish, so waiting happens in `allow_threads` and the lock is
    /// only taken, without waiting, with the GIL held.
    pub fn lock(&self, py: Python<'_>) -> MutexGuard<'_, T> {
        loop {
            match self.0.try_lock() {
                Ok(guard) => return guard,
                // A panic is caught before it reaches Python and the engine's state stays valid.
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => py.allow_threads(|| drop(self.0.lock().unwrap_or_else(PoisonError::into_inner))),
            }
        }
    }
}
