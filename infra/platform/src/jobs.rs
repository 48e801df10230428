//! Maintenance a service runs on its own data: each job a name, a period and a function that
//! deletes what has expired and says how much.
//!
//! A service registers its jobs and runs them inside its own work, so data is purged by the
//! service that owns it, whichever other services are deployed. Every replica runs them: the
//! jobs are deletes of what is past a deadline, so two replicas running one at once delete each
//! row once between them, and no replica has to be the one that remembers. The first run comes
//! after a random part of the period, so replicas started together do not run together.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a run does: deletes what expired, and says how many rows.
pub type Run =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send>> + Send + Sync>;

/// One job.
#[derive(Clone)]
pub struct Job {
    pub name: &'static str,
    pub every: Duration,
    run: Run,
}

/// A service's jobs, run side by side until shutdown.
#[derive(Clone, Default)]
pub struct Jobs {
    jobs: Vec<Job>,
}

impl Jobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `run`, to be run every `every`.
    pub fn every<F, Fut>(mut self, name: &'static str, every: Duration, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
    {
        self.jobs.push(Job {
            name,
            every: every.max(Duration::from_secs(1)),
            run: Arc::new(move || Box::pin(run())),
        });
        self
    }

    /// Runs every job on its period until `shutdown`; a failed run is logged and the job runs
    /// again at its next time.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        for job in self.jobs {
            running.spawn(repeat(job, shutdown.clone()));
        }
        while running.join_next().await.is_some() {}
    }
}

async fn repeat(job: Job, shutdown: CancellationToken) {
    let mut wait = first_wait(job.every, rand::random::<f64>());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let outcome = match (job.run)().await {
            Ok(removed) => {
                tracing::info!(job = job.name, removed, "maintenance job done");
                "done"
            }
            Err(err) => {
                tracing::warn!(
                    job = job.name,
                    err = format!("{err:#}"),
                    "maintenance job failed; it runs again at its next time"
                );
                "failed"
            }
        };
        metrics::counter!("herald_jobs_runs_total", "job" => job.name, "outcome" => outcome)
            .increment(1);
        wait = job.every;
    }
}

/// The wait before a job's first run: `fraction` (0 to 1) of its period, so replicas started
/// together spread their runs.
fn first_wait(every: Duration, fraction: f64) -> Duration {
    every.mul_f64(fraction.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_first_run_is_within_one_period() {
        let hour = Duration::from_secs(3600);
        assert_eq!(first_wait(hour, 0.0), Duration::ZERO);
        assert_eq!(first_wait(hour, 0.5), Duration::from_secs(1800));
        assert_eq!(first_wait(hour, 7.0), hour);
    }

    #[tokio::test]
    async fn a_job_runs_every_period_and_a_failure_does_not_stop_it() {
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let jobs = Jobs::new().every("count", Duration::from_millis(100), move || {
            let counted = counted.clone();
            async move {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                anyhow::ensure!(n != 1, "the second run fails");
                Ok(n)
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(jobs.run(shutdown.clone()));
        // Runs go on after the failed second one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job stopped running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
