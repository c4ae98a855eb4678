//! A small fork–join pool for the host kernels, whose workers spin between jobs.
//!
//! A decode step is a chain of a few hundred short products. Rayon parks idle workers and wakes
//! them through the kernel, which cost a large share of a decode step and made two threads
//! slower than one on the embedded target (docs/performance.md). llama.cpp's pool
//! spins between the operations of a graph; so does this one: after a job, a worker spins for
//! `SPIN` before it sleeps, so the next product of the same step finds it awake. The calling
//! thread takes part in every job, and a call made while the pool is busy (another thread
//! decoding) simply runs on the calling thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The job being run: a task function called with indices `0..total`. The pointer is only
/// dereferenced while the submitting thread waits in `run`, which keeps the closure alive.
struct Job {
    task: *const (dyn Fn(usize) + Sync),
    total: usize,
}

struct Shared {
    /// The job of the current epoch, written by the submitter before it bumps `claim`'s epoch.
    job: Mutex<Option<(u32, Job)>>,
    /// `epoch << 32 | next index`: a worker claims an index only of the epoch it read the job
    /// of, so a late worker can never run an index of the next job with the last job's task.
    claim: AtomicU64,
    /// Tasks of the current job not yet finished.
    remaining: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    wake: Condvar,
    sleep_lock: Mutex<()>,
}

// SAFETY: the raw task pointer is only dereferenced while its owner waits for the job to end.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

pub struct Pool {
    shared: &'static Shared,
    workers: usize,
    submit: Mutex<()>,
}

impl Pool {
    /// The process's pool: one worker fewer than rayon's thread count (the caller is the other).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads().saturating_sub(1)))
    }

    fn new(workers: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: Mutex::new(None),
            claim: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake: Condvar::new(),
            sleep_lock: Mutex::new(()),
        }));
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("specbench-kernel-{i}"))
                .spawn(move || worker(shared))
                .expect("cannot start a kernel thread");
        }
        Self { shared, workers, submit: Mutex::new(()) }
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Calls `task(i)` for every `i` in `0..total`, spread over the pool and the calling thread;
    /// returns when all have run.
    pub fn run(&self, total: usize, task: &(dyn Fn(usize) + Sync)) {
        let busy = self.submit.try_lock();
        let Ok(_guard) = busy else {
            (0..total).for_each(task);
            return;
        };
        if self.workers == 0 || total <= 1 {
            (0..total).for_each(task);
            return;
        }
        let shared = self.shared;
        let epoch = ((shared.claim.load(Ordering::SeqCst) >> 32) as u32).wrapping_add(1);
        // SAFETY (lifetime): the pointer's lifetime is erased; it is dereferenced only by
        // claims of this epoch, all of which finish before this function returns.
        let task_ptr: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(task) };
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((epoch, Job { task: task_ptr, total }));
        shared.remaining.store(total, Ordering::SeqCst);
        shared.claim.store((epoch as u64) << 32, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        work_on(shared, epoch, task, total);
        while shared.remaining.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        if shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a host kernel task panicked on a pool thread");
        }
    }
}

impl Pool {
    /// Calls `task(i, chunk)` for each `chunk`-long piece `i` of `out`, in parallel.
    pub fn for_each_chunk(&self, out: &mut [f32], chunk: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
        // One uncontended lock per piece hands each task its own mutable slice.
        let pieces: Vec<Mutex<&mut [f32]>> = out.chunks_mut(chunk.max(1)).map(Mutex::new).collect();
        self.run(pieces.len(), &|i| {
            let mut piece = pieces[i].lock().unwrap_or_else(|e| e.into_inner());
            task(i, &mut piece)
        });
    }
}

/// Claims and runs indices of job `epoch` until none are left.
fn work_on(shared: &Shared, epoch: u32, task: &(dyn Fn(usize) + Sync), total: usize) {
    loop {
        let current = shared.claim.load(Ordering::Acquire);
        let (claim_epoch, index) = ((current >> 32) as u32, (current & 0xFFFF_FFFF) as usize);
        if claim_epoch != epoch || index >= total {
            return;
        }
        if shared
            .claim
            .compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        if catch_unwind(AssertUnwindSafe(|| task(index))).is_err() {
            shared.panicked.store(true, Ordering::SeqCst);
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker(shared: &'static Shared) {
    let mut seen = 0u32;
    loop {
        let spin_start = Instant::now();
        let epoch = loop {
            let epoch = (shared.claim.load(Ordering::Acquire) >> 32) as u32;
            if epoch != seen {
                break epoch;
            }
            if spin_start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let lock = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            let epoch = (shared.claim.load(Ordering::SeqCst) >> 32) as u32;
            if epoch == seen {
                drop(shared.wake.wait(lock).unwrap_or_else(|e| e.into_inner()));
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        };
        seen = epoch;
        let job = shared
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(e, job)| (*e, job.task, job.total));
        if let Some((job_epoch, task, total)) = job
            && job_epoch == epoch
        {
            // SAFETY: claims of `epoch` only succeed while its submitter waits in `run`.
            work_on(shared, epoch, unsafe { &*task }, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_across_many_jobs() {
        let pool = Pool::new(1);
        for total in [0, 1, 2, 7, 100] {
            for _ in 0..50 {
                let counts: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                pool.run(total, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "total {total}");
            }
        }
    }

    #[test]
    fn a_sleeping_worker_wakes_for_the_next_job() {
        let pool = Pool::new(1);
        pool.run(4, &|_| {});
        std::thread::sleep(SPIN * 5);
        let sum = AtomicUsize::new(0);
        pool.run(64, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 63 * 64 / 2);
    }
}
