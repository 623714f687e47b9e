//! The engine's one threading policy: a small fixed pool of worker threads splits work by rows
//! (GEMM output rows, batch elements, normalisation rows), and every BLAS call inside runs
//! single-threaded, so BLAS threads never nest inside the engine's threads.
//!
//! Why not rayon: its work-stealing deques grow and shrink, so a step would allocate now and
//! then; this pool hands out task indices with one atomic counter and allocates nothing after
//! it starts. Splits never change what a row computes, and reductions across rows use a fixed
//! partition, so results do not depend on thread timing. Threads spin briefly before they
//! sleep: waking a sleeping thread costs tens of microseconds, more than the gap between two
//! parallel loops of a training step.

use crate::blas::set_blas_threads;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a thread busy-waits for the next job (or for the workers to finish) before sleeping.
const SPIN: Duration = Duration::from_micros(200);

/// A borrowed task function with its lifetime erased. `parallel_for` does not return before every
/// worker has finished with it, which is what makes the erasure sound.
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`, and it outlives every use (see `parallel_for`).
unsafe impl Send for TaskPtr {}

struct State {
    generation: u64,
    job: Option<(TaskPtr, usize)>,
    active: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    start: Condvar,
    finished: Condvar,
    /// Copies of `State::generation` and `State::active`, written under the lock, read while
    /// spinning without it.
    generation: AtomicU64,
    active: AtomicUsize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// One job at a time: callers on different threads take turns.
    run_lock: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// Set on pool workers and on a caller while it runs tasks: nested parallel loops run inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

fn run_tasks(shared: &Shared, task: TaskPtr, n: usize) {
    // SAFETY: the caller of `parallel_for` keeps the task alive until all workers are done.
    let f = unsafe { &*task.0 };
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// Lock a mutex, ignoring poisoning: a task that panicked was already reported to its caller,
/// and the pool's state is consistent at every unlock, so later jobs may go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Busy-wait until `done()` or until SPIN has passed; whether `done()` became true.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    let mut i = 0u32;
    while !done() {
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) && start.elapsed() > SPIN {
            return false;
        }
    }
    true
}

fn worker(shared: Arc<Shared>) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0;
    loop {
        spin_until(|| shared.generation.load(Ordering::Acquire) != seen);
        let (task, n) = {
            let mut st = lock(&shared.state);
            while st.generation == seen && !st.shutdown {
                st = shared.start.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job.expect("a new generation carries a job")
        };
        run_tasks(&shared, task, n);
        let mut st = lock(&shared.state);
        st.active -= 1;
        shared.active.store(st.active, Ordering::Release);
        if st.active == 0 {
            shared.finished.notify_all();
        }
    }
}

impl Pool {
    fn new(threads: usize) -> Pool {
        set_blas_threads(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { generation: 0, job: None, active: 0, shutdown: false }),
            start: Condvar::new(),
            finished: Condvar::new(),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("lmcore-{i}")).spawn(move || worker(s)).expect("spawning a worker thread")
            })
            .collect();
        Pool { shared, threads, run_lock: Mutex::new(()), workers }
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let _turn = lock(&self.run_lock);
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased; we wait below until no worker uses the pointer.
        let task = TaskPtr(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) });
        s.next.store(0, Ordering::Relaxed);
        {
            let mut st = lock(&s.state);
            st.job = Some((task, n));
            st.active = self.threads - 1;
            st.generation += 1;
            s.active.store(st.active, Ordering::Release);
            s.generation.store(st.generation, Ordering::Release);
            s.start.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        run_tasks(s, task, n);
        IN_POOL.with(|c| c.set(false));
        spin_until(|| s.active.load(Ordering::Acquire) == 0);
        let mut st = lock(&s.state);
        while st.active > 0 {
            st = s.finished.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.job = None;
        drop(st);
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a parallel task panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

static POOL: RwLock<Option<Arc<Pool>>> = RwLock::new(None);

fn pool() -> Arc<Pool> {
    if let Some(p) = POOL.read().expect("pool lock").as_ref() {
        return Arc::clone(p);
    }
    let mut slot = POOL.write().expect("pool lock");
    Arc::clone(slot.get_or_insert_with(|| Arc::new(Pool::new(usable_cores()))))
}

/// Cores this process may run on: its CPU affinity and cgroup quota, not the machine's count.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Use `n` threads from now on, at least 1 and at most `usable_cores()` (threads beyond the
/// cores spin against each other: measured 4x to 40x slower). Returns the count in use.
pub fn set_num_threads(n: usize) -> usize {
    let threads = n.clamp(1, usable_cores());
    let new = Arc::new(Pool::new(threads));
    *POOL.write().expect("pool lock") = Some(new);
    threads
}

/// Threads the engine uses.
pub fn num_threads() -> usize {
    pool().threads
}

/// Call `f(i)` for every i in 0..n, spread over the pool; returns when all calls are done.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    let pool = pool();
    if n == 1 || pool.threads == 1 || IN_POOL.with(|c| c.get()) {
        (0..n).for_each(f);
    } else {
        pool.run(n, f);
    }
}

/// Rows per task when `rows` rows are split among the engine's threads.
pub fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(pool().threads).max(1)
}

/// A raw pointer that may cross threads; used only to hand out disjoint chunks.
struct SendPtr<T>(*mut T);
// SAFETY: each task reconstructs a chunk no other task touches (see `Chunks`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the wrapper, not the bare pointer).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Split `data` into chunks of `size` elements and run `f(index, chunk)` on them in parallel.
pub fn for_each_chunk<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = data.len().div_ceil(size.max(1));
    let chunks = Chunks::new(data, size);
    // SAFETY: distinct i give disjoint chunks of `data`.
    parallel_for(n, &|i| f(i, unsafe { chunks.get(i) }));
}

/// Like `for_each_chunk` over two buffers in lockstep: chunk i of `a` goes with chunk i of `b`.
/// `b` must have at least as many chunks as `a`.
pub fn for_each_chunk2<T: Send, U: Send>(a: &mut [T], size_a: usize, b: &mut [U], size_b: usize, f: impl Fn(usize, &mut [T], &mut [U]) + Sync) {
    let mut none: [u8; 0] = [];
    for_each_chunk3(a, size_a, b, size_b, &mut none, 1, |i, a, b, _| f(i, a, b));
}

/// Elements below which an elementwise pass is not split further: a smaller span costs more to
/// hand to a thread than to compute.
const ELEMENTWISE_MIN: usize = 4096;

/// An elementwise pass over `out` split among the threads: `f(first, span)` gets each span of
/// `out` and the index of its first element, to take the same span of its inputs.
pub fn elementwise<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = rows_per_task(out.len()).max(ELEMENTWISE_MIN);
    for_each_chunk(out, chunk, |i, part| f(i * chunk, part));
}

/// Run `f(i, part)` in parallel on the parts that `ends` cuts `data` into: part i is
/// `data[ends[i - 1]..ends[i]]` (from 0 for the first), so parts may differ in length.
pub fn for_each_span<T: Send>(data: &mut [T], ends: &[usize], f: impl Fn(usize, &mut [T]) + Sync) {
    let in_order = ends.windows(2).all(|w| w[0] <= w[1]) && ends.last().is_none_or(|&e| e <= data.len());
    assert!(in_order, "for_each_span: ends must be sorted and within the data");
    let ptr = SendPtr(data.as_mut_ptr());
    parallel_for(ends.len(), &|i| {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        // SAFETY: sorted ends within `data` give disjoint parts, one per task index.
        f(i, unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), ends[i] - start) })
    });
}

/// Like `for_each_chunk` over three buffers in lockstep. Chunk i of a buffer with fewer chunks
/// than `a` is empty.
pub fn for_each_chunk3<T: Send, U: Send, V: Send>(
    a: &mut [T],
    size_a: usize,
    b: &mut [U],
    size_b: usize,
    c: &mut [V],
    size_c: usize,
    f: impl Fn(usize, &mut [T], &mut [U], &mut [V]) + Sync,
) {
    let n = a.len().div_ceil(size_a.max(1));
    let bufs = (Chunks::new(a, size_a), Chunks::new(b, size_b), Chunks::new(c, size_c));
    // SAFETY: distinct i give disjoint chunks of each buffer (see `Chunks::get`).
    parallel_for(n, &|i| unsafe { f(i, bufs.0.get(i), bufs.1.get(i), bufs.2.get(i)) });
}

/// A buffer to be handed out in disjoint chunks, one per task index.
struct Chunks<T> {
    ptr: SendPtr<T>,
    size: usize,
    len: usize,
}

impl<T> Chunks<T> {
    fn new(data: &mut [T], size: usize) -> Self {
        Chunks { ptr: SendPtr(data.as_mut_ptr()), size: size.max(1), len: data.len() }
    }

    /// Chunk `i` (empty past the end).
    ///
    /// # Safety
    /// No other live reference may cover chunk `i` of this buffer.
    unsafe fn get<'a>(&self, i: usize) -> &'a mut [T] {
        let start = (i * self.size).min(self.len);
        std::slice::from_raw_parts_mut(self.ptr.get().add(start), self.size.min(self.len - start))
    }
}
