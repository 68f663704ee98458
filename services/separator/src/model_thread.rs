//! The model's own thread: the model is loaded, warmed up and run on one long-lived thread, and
//! nowhere else.
//!
//! Why not the executor's blocking pool: ONNX Runtime allocates a run's tensors on the thread
//! that calls it, glibc's malloc serves each thread from an arena of its own, and an arena keeps
//! what was freed into it for later allocations from it. Runs hopping between the pool's
//! threads spread the same peak over several arenas, each keeping its share: a separator
//! running HT-Demucs without ONNX Runtime's own arena (`DME_MEMORY_ARENA=false`) peaked at
//! 4.6 GB that way, and at 2.7 GB with every run on this thread (docs/BENCHMARKS.md, `make
//! bench-htdemucs`). Runs are one at a time anyway (a worker has one model).
//!
//! Consumes: a loader run on the thread, which makes the thread's state (the model, and what
//! else belongs with it). Produces: [`ModelThread::run`], which runs a closure with that state
//! on the thread and awaits its result. Guarantees: every use of the state is on the same
//! thread, in the order asked, so it needs no lock; a closure that panics fails its own run with
//! [`SeparateError::ModelPanicked`] (transient: the segment is redelivered) and the thread goes
//! on with the next; dropping the handle, or the future of [`ModelThread::start`], waits for
//! the thread to finish what it is doing and end, so the model (and a load in progress, with
//! its cache file) is never cut off by the process's exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::SeparateError;

/// A job for the thread: the closure given to [`ModelThread::run`], with its reply folded in.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Why the model's thread could not start, or stopped before the model was loaded.
#[derive(Debug, thiserror::Error)]
#[error("the model's thread: {0}")]
pub struct ThreadError(#[source] std::io::Error);

/// The handle of the model's thread, whose state `S` holds the model; dropping the handle ends
/// the thread and waits for it.
pub struct ModelThread<S> {
    // Dropped first: the thread's queue ends, then `_thread` joins it.
    jobs: mpsc::Sender<Job<S>>,
    _thread: Joined,
}

/// A thread joined when dropped.
struct Joined(Option<JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl<S: 'static> ModelThread<S> {
    /// Starts the thread, runs `load` on it and, when it gives the state, keeps it there;
    /// returns what `inspect` made of the loaded state (the model's info, say) with the handle.
    ///
    /// # Errors
    /// `load`'s error, or a [`ThreadError`] when the thread could not start or stopped.
    pub async fn start<E, T>(
        load: impl FnOnce() -> Result<S, E> + Send + 'static,
        inspect: impl FnOnce(&S) -> T + Send + 'static,
    ) -> Result<(ModelThread<S>, T), E>
    where
        E: From<ThreadError> + Send + 'static,
        T: Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        let (loaded, ready) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("dme-model".into())
            .spawn(move || {
                let mut state = match load() {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                        return;
                    }
                };
                if loaded.send(Ok(inspect(&state))).is_err() {
                    return;
                }
                // Ends when the handle is gone.
                for job in queue {
                    if catch_unwind(AssertUnwindSafe(|| job(&mut state))).is_err() {
                        tracing::error!("a model run panicked; its segment will be retried");
                    }
                }
            })
            .map_err(|e| E::from(ThreadError(e)))?;
        let thread = Joined(Some(thread));
        let seen = ready.await.map_err(|_| {
            E::from(ThreadError(std::io::Error::other(
                "it stopped while loading the model",
            )))
        })??;
        Ok((
            ModelThread {
                jobs,
                _thread: thread,
            },
            seen,
        ))
    }

    /// Runs `f` with the state on the model's thread, after the runs asked before it.
    ///
    /// # Errors
    /// [`SeparateError::ModelPanicked`] when `f` panicked (or the thread is gone).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<T, SeparateError> {
        let (reply, answer) = oneshot::channel();
        let job: Job<S> = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.jobs
            .send(job)
            .map_err(|_| SeparateError::ModelPanicked)?;
        answer.await.map_err(|_| SeparateError::ModelPanicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dme_model::{Model, ModelOptions, ModelSource};

    /// A load's error in these tests.
    #[derive(Debug)]
    struct Failed(String);

    impl From<ThreadError> for Failed {
        fn from(e: ThreadError) -> Failed {
            Failed(e.to_string())
        }
    }

    fn embedded() -> Result<Model, Failed> {
        Model::load(&ModelSource::Embedded, &ModelOptions::default())
            .map_err(|e| Failed(e.to_string()))
    }

    #[tokio::test]
    async fn every_run_is_on_the_thread_that_loaded_the_model() {
        let (thread, loader) = ModelThread::start(embedded, |_| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(loader, std::thread::current().id());
        let input = vec![0.25f32; 2 * 1000];
        for _ in 0..3 {
            let input = input.clone();
            let (on, stems) = thread
                .run(move |m| (std::thread::current().id(), m.separate(&input)))
                .await
                .unwrap();
            assert_eq!(on, loader);
            assert_eq!(stems.unwrap().len(), 4 * 2 * 1000);
        }
    }

    #[tokio::test]
    async fn a_run_that_panics_fails_alone_and_a_failed_or_panicking_load_is_returned() {
        let (thread, ()) = ModelThread::start(embedded, |_| ()).await.unwrap();
        assert!(matches!(
            thread.run(|_| panic!("a bug")).await,
            Err(SeparateError::ModelPanicked)
        ));
        // The model is still there for the next run.
        let input = vec![0.25f32; 2 * 1000];
        let stems = thread.run(move |m| m.separate(&input)).await.unwrap();
        assert_eq!(stems.unwrap().len(), 4 * 2 * 1000);
        let failed =
            ModelThread::start(|| Err::<Model, _>(Failed("no such model".into())), |_| ()).await;
        assert_eq!(failed.err().unwrap().0, "no such model");
        // A load that panics ends the thread: the start says so instead of waiting.
        let panicked =
            ModelThread::<Model>::start(|| -> Result<Model, Failed> { panic!("a bug") }, |_| ())
                .await;
        assert!(
            panicked.err().unwrap().0.contains("stopped while loading"),
            "the load's panic is a ThreadError"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_waits_for_the_thread_and_the_model_to_go() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread, ()) = ModelThread::start(embedded, |_| ()).await.unwrap();
        let flag = dropped.clone();
        // Set by the thread after the queue ends, just before the model is dropped.
        struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // A job that hands the thread a value dropped only when the thread's closure ends: the
        // job's own captures are dropped when it returns, so keep it alive through a leak-free
        // thread-local instead.
        thread
            .run(move |_| {
                thread_local! {
                    static KEEP: std::cell::RefCell<Option<SetOnDrop>> = const { std::cell::RefCell::new(None) };
                }
                KEEP.with(|k| *k.borrow_mut() = Some(SetOnDrop(flag)));
            })
            .await
            .unwrap();
        drop(thread);
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the handle's drop returned before the thread ended"
        );
    }
}
