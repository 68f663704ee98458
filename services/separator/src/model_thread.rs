//! The model's own thread: the model is loaded, warmed up and run on one long-lived thread, and
//! nowhere else.
//!
//! Why not the executor's blocking pool: ONNX Runtime allocates a run's tensors on the thread
//! that calls it, and glibc's malloc gives each thread an arena of its own, whose freed memory
//! only that arena reuses. Runs that hop between the pool's threads each leave a run's worth of
//! freed memory behind in another arena: a separator running HT-Demucs without ONNX Runtime's
//! own arena (`DME_MEMORY_ARENA=false`) peaked at 4.6 GB that way, and at 2.7 GB with every run
//! on this thread (docs/BENCHMARKS.md, `make bench-htdemucs`). Runs are one at a time anyway (a worker has one
//! model).
//!
//! Consumes: a loader run on the thread. Produces: [`ModelThread::run`], which runs a closure
//! with the model on that thread and awaits its result. Guarantees: every use of the model is on
//! the same thread, in the order asked; a closure that panics ends the thread, and every later
//! run fails with [`SeparateError::ModelPoisoned`] (the worker's jobs then fail and are
//! redelivered to other workers).

use std::sync::mpsc;

use dme_model::Model;
use tokio::sync::oneshot;

use crate::error::SeparateError;

/// A job for the thread: the closure given to [`ModelThread::run`], with its reply folded in.
type Job = Box<dyn FnOnce(&mut Model) + Send>;

/// The handle of the model's thread; the thread ends when the handle is dropped.
pub struct ModelThread {
    jobs: mpsc::Sender<Job>,
}

impl ModelThread {
    /// Starts the thread, runs `load` on it and, when it gives a model, keeps that model there;
    /// returns what `inspect` made of the loaded model (its info, say) with the handle.
    ///
    /// # Errors
    /// `load`'s error, or a failure to start the thread.
    pub async fn start<E, T>(
        load: impl FnOnce() -> Result<Model, E> + Send + 'static,
        inspect: impl FnOnce(&Model) -> T + Send + 'static,
    ) -> Result<(ModelThread, T), E>
    where
        E: From<std::io::Error> + Send + 'static,
        T: Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (loaded, ready) = oneshot::channel();
        std::thread::Builder::new()
            .name("dme-model".into())
            .spawn(move || {
                let mut model = match load() {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                        return;
                    }
                };
                if loaded.send(Ok(inspect(&model))).is_err() {
                    return;
                }
                // Ends when every handle is gone.
                for job in queue {
                    job(&mut model);
                }
            })?;
        let seen = ready.await.map_err(|_| {
            E::from(std::io::Error::other(
                "the model thread stopped while loading",
            ))
        })??;
        Ok((ModelThread { jobs }, seen))
    }

    /// Runs `f` with the model on the model's thread, after the runs asked before it.
    ///
    /// # Errors
    /// [`SeparateError::ModelPoisoned`] when the thread has ended (an earlier run panicked).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Model) -> T + Send + 'static,
    ) -> Result<T, SeparateError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |model| {
            let _ = reply.send(f(model));
        });
        self.jobs
            .send(job)
            .map_err(|_| SeparateError::ModelPoisoned)?;
        answer.await.map_err(|_| SeparateError::ModelPoisoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dme_model::{ModelOptions, ModelSource};

    fn embedded() -> Result<Model, std::io::Error> {
        Model::load(&ModelSource::Embedded, &ModelOptions::default())
            .map_err(|e| std::io::Error::other(e.to_string()))
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
    async fn a_run_that_panics_fails_every_later_run_and_a_failed_load_is_returned() {
        let (thread, ()) = ModelThread::start(embedded, |_| ()).await.unwrap();
        assert!(thread.run(|_| panic!("a bug")).await.is_err());
        assert!(matches!(
            thread.run(|m| m.info().segment).await,
            Err(SeparateError::ModelPoisoned)
        ));
        let failed = ModelThread::start(
            || Err::<Model, _>(std::io::Error::other("no such model")),
            |_| (),
        )
        .await;
        assert_eq!(failed.err().unwrap().to_string(), "no such model");
    }
}
