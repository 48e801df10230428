//! Reports: figures kept from the stream, scheduled reports built from them exactly once per
//! period across any number of replicas, and maintenance jobs on the same scheduler.
//!
//! `herald reports` consumes every domain topic into aggregates ([`aggregates`]), each event
//! once by its `event_id`. Its scheduler ([`schedule`]) runs each report's due periods: a run
//! is claimed by inserting its (report, period) row, so no leader is elected and a second
//! replica finds the row and does nothing; a run whose replica died is taken over once its
//! lease expires. Periods are decided from the database's clock, never a replica's. A run
//! stores CSV and HTML ([`render`]), served by [`api`], and announces itself with a
//! `report.generated` event, so the notification service emails it.

pub mod aggregates;
pub mod api;
pub mod cron;
pub mod render;
pub mod schedule;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use anyhow::Context as _;
use async_trait::async_trait;
use events::{Catalog, Codec};
use jiff::{SignedDuration, Timestamp};
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Runner};
use platform::contract::{ContractArgs, Emitter};
use platform::db::Database;
use platform::kafka::{KafkaArgs, Publisher};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::aggregates::{EVENTS, NOTIFICATIONS, ORDERS, SIGNUPS};
use crate::render::{Bucket, ReportData};
use crate::schedule::{Covers, Job, Period, Report, Schedule, Task};
use crate::store::{Claim, Seen, SqlStore};

/// The consumer's name: its group is the topic prefix followed by this.
pub const NAME: &str = "reports";
const REPORT_GENERATED: &str = "report.generated";

/// `herald reports` settings (also flattened into `herald up`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportsArgs {
    /// The schedule (reports and jobs); default: the starter schedule built in
    /// (`consumers/reports/reports.toml`).
    #[arg(long, env = "REPORTS_FILE")]
    pub reports_file: Option<PathBuf>,
    /// How often the scheduler looks for due periods, in milliseconds.
    #[arg(long, env = "REPORTS_TICK_MS", default_value_t = 1000)]
    pub tick_ms: u64,
    /// How long a claimed run is its replica's before another may take it over.
    #[arg(long, env = "REPORTS_LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// How far back missed periods are caught up on start.
    #[arg(long, env = "REPORTS_CATCH_UP_HOURS", default_value_t = 48)]
    pub catch_up_hours: u64,
    /// Stored reports older than this are purged (job purge-reports).
    #[arg(long, env = "REPORTS_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u64,
    /// The aggregates' record of seen events (what makes a redelivered event count once) is
    /// kept this long, then purged (job purge-seen-events).
    #[arg(long, env = "REPORTS_SEEN_RETENTION_DAYS", default_value_t = 30)]
    pub seen_retention_days: u64,
    /// This replica's name in the runs it claims (default: host name and process id).
    #[arg(long = "reports-replica", env = "REPORTS_REPLICA")]
    pub reports_replica: Option<String>,
    /// Shifts the database's clock as the scheduler reads it, in seconds: for drills and
    /// tests of catch-up, never in production.
    #[arg(
        long,
        env = "REPORTS_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub clock_offset_secs: i64,
}

impl ReportsArgs {
    /// The schedule, read and checked (`herald check` reads it too).
    pub fn schedule(&self) -> anyhow::Result<Schedule> {
        Schedule::load(self.reports_file.as_deref()).context("REPORTS_FILE")
    }
}

/// The handler: each batch of new events added to the aggregates in one transaction.
pub struct Aggregator {
    store: Arc<SqlStore>,
}

#[async_trait]
impl Handler for Aggregator {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let seen: Vec<Seen<'_>> = events
            .iter()
            .map(|event| Seen {
                event_id: event.envelope.event_id,
                event_type: &event.envelope.event_type,
                occurred_at: event.envelope.occurred_at.as_second(),
                actor: &event.envelope.actor,
                data: &event.data,
            })
            .collect();
        let span = tracing::info_span!("aggregate", otel.kind = "client", events = seen.len());
        let new = async {
            let now = self.store.now_us().await.or_retry()?;
            self.store.apply(&seen, now).await.or_retry()
        }
        .instrument(span)
        .await?;
        metrics::counter!("herald_reports_events_total").increment(new as u64);
        Ok(())
    }
}

/// Publishes `report.generated`, encoded like every other event.
pub struct Announcer {
    emitter: Emitter,
    publisher: Publisher,
}

impl Announcer {
    async fn announce(
        &self,
        event_id: Uuid,
        report_id: Uuid,
        report: &Report,
        period: &Period,
    ) -> anyhow::Result<()> {
        let data = json!({
            "report_id": report_id,
            "report": report.name,
            "period_start": period.start.to_string(),
            "period_end": period.end.to_string(),
            "recipients": report.recipients,
            "url": format!("{}/{report_id}.html", api::BASE),
        });
        let record = self.emitter.record(
            REPORT_GENERATED,
            event_id,
            &report_id.to_string(),
            &data,
            platform::clock::now_us(),
        )?;
        self.publisher.publish_all(&[record]).await?;
        Ok(())
    }
}

/// A period's notification outcomes, (channel, status, count), from the
/// `notification.settled` events the notification service publishes.
fn outcomes(figures: &[(String, i64, String, aggregates::Tally)]) -> Vec<(String, String, i64)> {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (metric, _, key, tally) in figures {
        if metric == NOTIFICATIONS
            && let Some((channel, status)) = key.split_once('/')
        {
            *counts.entry((channel.into(), status.into())).or_default() += tally.count;
        }
    }
    counts
        .into_iter()
        .map(|((channel, status), count)| (channel, status, count))
        .collect()
}

/// Runs due reports and jobs, each once across every replica.
pub struct Scheduler {
    store: Arc<SqlStore>,
    schedule: Schedule,
    announcer: Announcer,
    aggregates: Progress,
    me: String,
    args: ReportsArgs,
}

/// Where the aggregating consumer is: a period is produced only once the aggregates hold
/// every event the log received before the period ended.
struct Progress {
    kafka: KafkaArgs,
    topics: Vec<String>,
    group: String,
}

impl Progress {
    async fn holds_until(&self, end: Timestamp) -> anyhow::Result<bool> {
        Ok(platform::kafka::group_has_read_until(
            &self.kafka,
            &self.group,
            &self.topics,
            end.as_millisecond(),
        )
        .await?)
    }
}

/// What producing one period did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced {
    Made(Uuid),
    /// Finished before, by this replica or another.
    Already(Uuid),
    /// Another replica is making it now.
    Elsewhere,
    /// The aggregates have not read every event received before the period ended yet.
    Waiting,
}

fn at_us(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn days(n: u64) -> i64 {
    i64::try_from(n)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(86_400_000_000)
}

impl Scheduler {
    /// Looks for due work every tick until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.args.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.tick().await {
                tracing::warn!(
                    err = format!("{err:#}"),
                    "the report scheduler will try again"
                );
            }
        }
    }

    async fn tick(&self) -> anyhow::Result<()> {
        let now = at_us(self.store.now_us().await?);
        let hours = i64::try_from(self.args.catch_up_hours).unwrap_or(i64::MAX / 7200);
        let since = now - SignedDuration::from_hours(hours);
        for report in &self.schedule.reports {
            let due = report.due(since, now);
            if due.is_empty() {
                continue;
            }
            let finished: HashSet<String> = self
                .store
                .runs(&report.name)
                .await?
                .into_iter()
                .filter(|(_, status, _)| status == "done")
                .map(|(period, _, _)| period)
                .collect();
            for period in due.iter().filter(|p| !finished.contains(&p.id)) {
                self.produce(report, period).await?;
            }
        }
        for job in &self.schedule.jobs {
            if let Some(fire) = job.due(since, now) {
                self.maintain(job, fire).await?;
            }
        }
        Ok(())
    }

    /// Produces one period of one report unless it exists or another replica is on it.
    pub async fn produce(&self, report: &Report, period: &Period) -> anyhow::Result<Produced> {
        if !self.aggregates.holds_until(period.end).await? {
            tracing::debug!(report = %report.name, period = %period.id, "waiting for the aggregates");
            return Ok(Produced::Waiting);
        }
        let lease = i64::try_from(self.args.lease_secs).unwrap_or(60) * 1_000_000;
        let now = self.store.now_us().await?;
        let (report_id, event_id, attempt) = match self
            .store
            .claim(&report.name, period, &self.me, now, lease)
            .await?
        {
            Claim::Done { report_id } => return Ok(Produced::Already(report_id)),
            Claim::Held => return Ok(Produced::Elsewhere),
            Claim::Run {
                report_id,
                event_id,
                attempt,
            } => (report_id, event_id, attempt),
        };
        if attempt > 1 {
            tracing::warn!(
                report = %report.name, period = %period.id, attempt,
                "taking over a run whose replica stopped before finishing it"
            );
        }
        let started = std::time::Instant::now();
        let data = self.gather(report, period).await?;
        let (csv, html) = (render::csv(&data), render::html(&data));
        // Stored before it is announced, so the link in the announcement works; announced
        // before the run is marked done, so a crash in between announces again (with the
        // same event id, which consumers deduplicate) rather than never.
        if !self
            .store
            .save_output(&report.name, period, report_id, &self.me, &csv, &html, now)
            .await?
        {
            return Ok(Produced::Elsewhere);
        }
        self.announcer
            .announce(event_id, report_id, report, period)
            .await?;
        let now = self.store.now_us().await?;
        if !self
            .store
            .finish(&report.name, period, &self.me, now)
            .await?
        {
            return Ok(Produced::Elsewhere);
        }
        metrics::counter!("herald_reports_produced_total", "report" => report.name.clone())
            .increment(1);
        tracing::info!(
            report = %report.name, period = %period.id, %report_id,
            took_ms = started.elapsed().as_millis() as u64,
            "report produced"
        );
        Ok(Produced::Made(report_id))
    }

    /// The figures of one period, by the sub-unit of its cover (hours of a day, days of a
    /// week).
    async fn gather(&self, report: &Report, period: &Period) -> anyhow::Result<ReportData> {
        let parts = match report.covers {
            Covers::Hour => vec![period.clone()],
            Covers::Day => Covers::Hour.ending_between(
                period.start - SignedDuration::from_nanos(1),
                period.end,
                &report.zone,
            ),
            Covers::Week => Covers::Day.ending_between(
                period.start - SignedDuration::from_nanos(1),
                period.end,
                &report.zone,
            ),
        };
        let (start, end) = (period.start.as_second(), period.end.as_second());
        let figures = self.store.figures(start, end).await?;
        let mut buckets = Vec::with_capacity(parts.len());
        for part in &parts {
            let (from, to) = (part.start.as_second(), part.end.as_second());
            let mut bucket = Bucket {
                start: part.start,
                active_users: self.store.active_users(from, to).await?,
                ..Bucket::default()
            };
            for (metric, _, key, tally) in figures
                .iter()
                .filter(|(_, hour, _, _)| (from..to).contains(hour))
            {
                match metric.as_str() {
                    EVENTS => *bucket.events.entry(key.clone()).or_default() += tally.count,
                    SIGNUPS => bucket.signups += tally.count,
                    ORDERS => *bucket.orders.entry(key.clone()).or_default() += *tally,
                    _ => {}
                }
            }
            buckets.push(bucket);
        }
        Ok(ReportData {
            report: report.name.clone(),
            title: report.title.clone(),
            period: period.id.clone(),
            start: period.start,
            end: period.end,
            zone: report.zone.clone(),
            buckets,
            active_users: self.store.active_users(start, end).await?,
            notifications: outcomes(&figures),
        })
    }

    /// Runs one maintenance job for one fire time, once across every replica.
    async fn maintain(&self, job: &Job, fire: Timestamp) -> anyhow::Result<()> {
        let name = format!("job:{}", job.task.name());
        let period = Period {
            id: fire.to_string(),
            start: fire,
            end: fire,
        };
        let now = self.store.now_us().await?;
        let lease = i64::try_from(self.args.lease_secs).unwrap_or(60) * 1_000_000;
        let Claim::Run { .. } = self
            .store
            .claim(&name, &period, &self.me, now, lease)
            .await?
        else {
            return Ok(());
        };
        let removed: BTreeMap<&str, u64> = match job.task {
            Task::PurgeReports => {
                let before = now - days(self.args.retention_days);
                BTreeMap::from([(
                    "report_outputs",
                    self.store
                        .purge(
                            "DELETE FROM report_outputs WHERE created_at_us < $1",
                            before,
                        )
                        .await?,
                )])
            }
            Task::PurgeSeenEvents => {
                let before = now - days(self.args.seen_retention_days);
                BTreeMap::from([(
                    "report_seen",
                    self.store
                        .purge("DELETE FROM report_seen WHERE seen_at_us < $1", before)
                        .await?,
                )])
            }
        };
        tracing::info!(job = job.task.name(), fire = %fire, ?removed, "maintenance job done");
        self.store.finish(&name, &period, &self.me, now).await?;
        Ok(())
    }
}

/// Every domain topic.
fn topics(catalog: &Catalog, kafka: &KafkaArgs) -> Vec<String> {
    catalog
        .topics()
        .into_iter()
        .map(|t| kafka.topic(t))
        .collect()
}

/// The reports service's parts: the aggregating consumer, the scheduler and the API.
pub struct Service {
    pub runner: Runner,
    pub scheduler: Arc<Scheduler>,
    pub api: Arc<api::ReportsApi>,
}

impl Service {
    /// Migrates the store, loads the schedule and prepares the consumer of every topic.
    pub async fn connect(
        db: Database,
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        auth: Arc<Authenticator>,
        args: &ReportsArgs,
    ) -> anyhow::Result<Self> {
        let (scheduler, catalog, codec) =
            Self::scheduler(db, kafka, contract, consumer, args).await?;
        let topics = topics(&catalog, kafka);
        let handler = Arc::new(Aggregator {
            store: scheduler.store.clone(),
        });
        let runner = Runner::new(NAME, topics, kafka, consumer, codec, handler);
        Ok(Self {
            runner,
            api: Arc::new(api::ReportsApi {
                store: scheduler.store.clone(),
                auth,
            }),
            scheduler,
        })
    }

    /// The scheduler alone (for `herald reports run`).
    pub async fn scheduler(
        db: Database,
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        args: &ReportsArgs,
    ) -> anyhow::Result<(Arc<Scheduler>, Arc<Catalog>, Arc<Codec>)> {
        let schedule = args.schedule()?;
        let store =
            Arc::new(SqlStore::new(db, args.clock_offset_secs.saturating_mul(1_000_000)).await?);
        let catalog = Arc::new(contract.catalog()?);
        let codec = Arc::new(contract.codec(catalog.clone(), kafka).await?);
        let announcer = Announcer {
            emitter: Emitter::new(catalog.clone(), codec.clone(), kafka, NAME),
            publisher: Publisher::new(kafka, Duration::from_secs(10))?,
        };
        let aggregates = Progress {
            kafka: kafka.clone(),
            topics: topics(&catalog, kafka),
            group: consumer
                .group
                .clone()
                .unwrap_or_else(|| format!("{}{NAME}", kafka.topic_prefix)),
        };
        let me = args.reports_replica.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        Ok((
            Arc::new(Scheduler {
                store,
                schedule,
                announcer,
                aggregates,
                me,
                args: args.clone(),
            }),
            catalog,
            codec,
        ))
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }
}

/// Reports as a service: its API, its aggregating consumer, and the scheduler that produces
/// reports and runs the maintenance jobs, stopped with the consumer.
impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "reports"
    }

    fn routes(&self) -> axum::Router {
        self.router()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            let scheduling = shutdown.child_token();
            let scheduler = tokio::spawn(self.scheduler.clone().run(scheduling.clone()));
            let consumed = self.runner.run(shutdown).await;
            scheduling.cancel();
            scheduler.await?;
            Ok(consumed?)
        })
    }
}

/// `herald reports run <report> --period <id>`: one period by hand, once like any other.
pub async fn run_by_hand(
    scheduler: &Scheduler,
    report: &str,
    period: &str,
) -> anyhow::Result<Produced> {
    let report = scheduler.schedule.report(report).ok_or_else(|| {
        anyhow::anyhow!(
            "no report {report:?}; the schedule has {}",
            scheduler
                .schedule
                .reports
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let period = report
        .covers
        .parse(period, &report.zone)
        .map_err(anyhow::Error::msg)?;
    let now = at_us(scheduler.store.now_us().await?);
    anyhow::ensure!(
        period.end <= now,
        "period {} has not ended yet (it ends at {})",
        period.id,
        period.end
    );
    // The aggregates may be behind (a process just started): wait a little for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match scheduler.produce(report, &period).await? {
            Produced::Waiting if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            produced => return Ok(produced),
        }
    }
}
