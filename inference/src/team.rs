//! A team of helper threads that split one matrix product at a time with the calling thread.
//!
//! A decode step of a small model is a few hundred products of 10–30 µs each. Handing each to a
//! general work-stealing pool (rayon) costs several microseconds of wake-ups and splitting per
//! product — on two cores a product was often slower on both than on one. Here the helpers stay
//! awake between products, watching an epoch counter (flat out for 100 µs, then yielding their
//! core to any other thread that wants it, 2 ms in all) before they sleep, and take the next
//! chunk of rows with one atomic increment; the caller works on chunks too and returns once
//! every chunk is done (it never waits for a helper that has not started one). Only one product
//! runs on the team at a time: a second caller (another model on another thread) computes its
//! product alone rather than wait.
//!
//! The job is a borrowed closure whose lifetime is erased while the helpers hold it. That is
//! sound for the same reason as a scoped thread: [`Team::run`] does not return before every
//! chunk was claimed and finished, a chunk is only claimed with a compare-and-swap against a
//! counter that carries the job's epoch (so a helper still holding an older job can claim
//! nothing), and the closure is only called after a successful claim.

// Sharing a borrowed closure and disjoint parts of one buffer with long-lived threads needs
// `unsafe`; the workspace denies it everywhere else.
#![allow(unsafe_code)]

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError, TryLockError,
    },
    time::{Duration, Instant},
};

/// How long an idle helper spins flat out (a decode step's products come every few tens of
/// microseconds) ...
const SPIN_HOT: Duration = Duration::from_micros(100);
/// ... and how long it then keeps watching while yielding its core to any other thread that
/// wants it (the HTTP server, the request threads), before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// The team every CPU product uses: `$COMPUTE_THREADS` threads (the caller plus helpers), by
/// default as many as the machine has cores.
pub fn global() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let threads = std::env::var("COMPUTE_THREADS")
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|t| *t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Team::new(threads)
    })
}

type Task = dyn Fn(usize) + Sync;

/// The job being run: its epoch, its number of chunks, and the closure (lifetime erased).
#[derive(Clone, Copy)]
struct Job {
    epoch: u64,
    total: u64,
    task: *const Task,
}

// SAFETY: the closure behind `task` is `Sync`, and it is only called while `Team::run`, which
// borrows it, has not returned (see the module documentation).
unsafe impl Send for Job {}

struct Shared {
    /// Bumped for every job; helpers watch it.
    epoch: AtomicU64,
    /// The low 32 bits of the current epoch, then the next unclaimed chunk.
    next: AtomicU64,
    /// Chunks of the current job finished.
    completed: AtomicU64,
    job: Mutex<Option<Job>>,
    /// A chunk's closure panicked.
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// The caller's thread plus `size - 1` helper threads.
pub struct Team {
    shared: Arc<Shared>,
    helpers: usize,
    submit: Mutex<()>,
}

impl Team {
    /// A team of `size` threads in all (the caller counts as one).
    pub fn new(size: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            next: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            job: Mutex::new(None),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut helpers = 0;
        for i in 1..size {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("compute-team-{i}"))
                .spawn(move || helper(&shared));
            match spawned {
                Ok(_) => helpers += 1,
                Err(e) => tracing::warn!("cannot start a matrix-product thread: {e}"),
            }
        }
        Team { shared, helpers, submit: Mutex::new(()) }
    }

    /// Threads that work on a job (the caller included).
    pub fn size(&self) -> usize {
        self.helpers + 1
    }

    /// Call `task(i)` once for every `i` in `0..total`, spread over the team; returns when all
    /// calls have returned. Panics if a call panicked.
    pub fn run(&self, total: usize, task: &(dyn Fn(usize) + Sync)) {
        let alone = || (0..total).for_each(task);
        if self.helpers == 0 || total <= 1 || total > u32::MAX as usize {
            return alone();
        }
        let _turn = match self.submit.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return alone(),
        };
        let s = &*self.shared;
        let epoch = s.epoch.load(Ordering::Relaxed) + 1;
        // SAFETY: only the lifetime is erased; the pointer is dereferenced only while this call
        // is running (module documentation).
        let task: *const Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Task>(task) };
        let job = Job { epoch, total: total as u64, task };
        s.completed.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
        s.next.store((epoch & 0xffff_ffff) << 32, Ordering::Release);
        s.epoch.store(epoch, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        work(s, job);
        while s.completed.load(Ordering::Acquire) < job.total {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a matrix-product task panicked on a team thread");
        }
    }

    /// `f(i, chunk)` for every `chunk_len`-long chunk `i` of `data` (the last may be shorter),
    /// spread over the team, like rayon's `par_chunks_mut().enumerate().for_each()`.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk_len = chunk_len.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk_len), &|i| {
            let start = i * chunk_len;
            let end = (start + chunk_len).min(len);
            // SAFETY: `run` calls each `i` exactly once, so the chunks handed out are disjoint
            // parts of `data`, which stays mutably borrowed until `run` returns.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, chunk)
        });
    }
}

/// A raw pointer that may cross threads (the chunks it leads to are disjoint).
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: used only by `for_each_chunk_mut`, whose chunks never overlap.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Claim and run chunks of `job` until none is left.
fn work(s: &Shared, job: Job) {
    let tag = (job.epoch & 0xffff_ffff) << 32;
    loop {
        let cur = s.next.load(Ordering::Acquire);
        if cur & !0xffff_ffff != tag || cur & 0xffff_ffff >= job.total {
            return;
        }
        if s.next.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            continue;
        }
        let i = (cur & 0xffff_ffff) as usize;
        // SAFETY: chunk `i` of this epoch was claimed, so `Team::run` is still waiting for it and
        // the closure it borrowed is alive.
        let task = unsafe { &*job.task };
        if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.completed.fetch_add(1, Ordering::Release);
    }
}

/// A helper thread: wait for a new epoch (spinning, then sleeping), work on its job, repeat.
fn helper(s: &Shared) {
    let mut seen = s.epoch.load(Ordering::Acquire);
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = idle.elapsed();
            if waited > SPIN {
                let mut g = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            } else if waited > SPIN_HOT {
                std::thread::yield_now();
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = job.filter(|j| j.epoch == seen) {
            work(s, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_once_and_in_place() {
        let team = Team::new(3);
        for round in 0..200 {
            let mut data = vec![0u32; 1000 + round];
            team.for_each_chunk_mut(&mut data, 7, &|i, chunk| {
                for (k, v) in chunk.iter_mut().enumerate() {
                    *v += (i * 7 + k) as u32 + 1;
                }
            });
            assert!(data.iter().enumerate().all(|(k, v)| *v == k as u32 + 1), "round {round}");
        }
    }

    #[test]
    fn callers_on_several_threads_all_finish() {
        let team = Arc::new(Team::new(2));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let team = Arc::clone(&team);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let sum = AtomicU64::new(0);
                        team.run(50, &|i| {
                            sum.fetch_add(i as u64 + t, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 1225 + 50 * t);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn wakes_sleeping_helpers() {
        let team = Team::new(2);
        std::thread::sleep(SPIN * 3);
        let sum = AtomicU64::new(0);
        team.run(10, &|i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_goes_on() {
        let team = Team::new(2);
        let hit = catch_unwind(AssertUnwindSafe(|| {
            team.run(8, &|i| assert!(i != 5, "task 5 fails"));
        }));
        assert!(hit.is_err());
        let sum = AtomicU64::new(0);
        team.run(4, &|i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }
}
