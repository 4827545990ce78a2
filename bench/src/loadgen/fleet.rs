//! A fleet: the bots of one process, on one thread, and the line protocol a
//! worker process speaks with the orchestrator.
//!
//! A worker reads one JSON [`FleetPlan`] line on stdin, then the commands
//! `measure` and `stop`; it writes `progress <joined> <failed>` lines while
//! bots join and one `result <json>` line (a [`FleetResult`]) at the end.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::bot::{self, BotResult, BotSpec, Phase, Probes, Workload};
use super::tokens::TokenSource;

/// Longest line a worker accepts on stdin (a plan with its bots).
pub const PLAN_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How often a worker reports join progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// What one process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetPlan {
    pub workload: Workload,
    pub bots: Vec<BotSpec>,
    /// Joins started per second (bots join in a ramp, not all at once).
    pub join_rate_per_s: u32,
    /// The node's HS256 secret to mint tokens with; none: its dev endpoint.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetResult {
    pub bots: Vec<BotResult>,
}

/// Joined and failed bots so far.
#[derive(Debug, Default)]
pub struct JoinProgress {
    pub joined: Cell<usize>,
    pub failed: Cell<usize>,
}

/// Runs every bot of `plan` until `phase` says stop. Call inside a tokio
/// `LocalSet` (bots share state through `Rc`).
pub async fn run(
    plan: FleetPlan,
    phase: watch::Receiver<Phase>,
    progress: Rc<JoinProgress>,
) -> FleetResult {
    let tokens = TokenSource::new(plan.secret.as_deref());
    let probes = Probes::default();
    let gap = Duration::from_secs_f64(1.0 / f64::from(plan.join_rate_per_s.max(1)));
    let mut tasks = Vec::with_capacity(plan.bots.len());
    for (i, spec) in plan.bots.into_iter().enumerate() {
        let (workload, tokens, probes, phase) = (
            plan.workload.clone(),
            tokens.clone(),
            probes.clone(),
            phase.clone(),
        );
        let progress = progress.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut stopped = phase.clone();
            tokio::select! {
                _ = tokio::time::sleep(gap * i as u32) => {}
                // Stopped while waiting for its turn to join: it never joins.
                _ = stopped.wait_for(|p| *p == Phase::Stop) => {
                    progress.failed.set(progress.failed.get() + 1);
                    return BotResult {
                        instance: spec.instance,
                        user: spec.user,
                        join_error: Some("stopped before its turn to join".into()),
                        ..BotResult::default()
                    };
                }
            }
            bot::run(spec, workload, tokens, probes, phase, &progress).await
        }));
    }
    let mut bots = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(r) => bots.push(r),
            Err(e) => bots.push(BotResult {
                join_error: Some(format!("bot task failed: {e}")),
                ..BotResult::default()
            }),
        }
    }
    FleetResult { bots }
}

/// The worker process: the plan and commands on stdin, progress and the
/// result on stdout.
pub async fn worker() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no plan on stdin"))?;
    anyhow::ensure!(
        first.len() <= PLAN_BYTES_MAX,
        "plan over {PLAN_BYTES_MAX} bytes"
    );
    let plan: FleetPlan = serde_json::from_str(&first)?;
    let total = plan.bots.len();
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let progress = Rc::new(JoinProgress::default());
    let local = tokio::task::LocalSet::new();
    let fleet = local.spawn_local(run(plan, phase_rx, progress.clone()));
    let commands = async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "measure" => {
                    phase_tx.send_replace(Phase::Measure);
                }
                "stop" => break,
                other => eprintln!("worker: unknown command {other:?}"),
            }
        }
        // `stop`, or the orchestrator went away: leave either way.
        phase_tx.send_replace(Phase::Stop);
    };
    let report = async {
        let mut stdout = tokio::io::stdout();
        let mut last = (usize::MAX, usize::MAX);
        loop {
            let now = (progress.joined.get(), progress.failed.get());
            if now != last {
                let line = format!("progress {} {}\n", now.0, now.1);
                stdout.write_all(line.as_bytes()).await?;
                stdout.flush().await?;
                last = now;
            }
            if now.0 + now.1 >= total {
                return anyhow::Ok(());
            }
            tokio::time::sleep(PROGRESS_INTERVAL).await;
        }
    };
    let result = local
        .run_until(async move {
            tokio::task::spawn_local(commands);
            let mut fleet = fleet;
            // Progress until every bot joined or failed, or until the fleet
            // ends anyway (a bot task that panicked never reports).
            let early = tokio::select! {
                r = &mut fleet => Some(r),
                r = report => {
                    r?;
                    None
                }
            };
            anyhow::Ok(match early {
                Some(r) => r?,
                None => fleet.await?,
            })
        })
        .await?;
    let mut stdout = tokio::io::stdout();
    let line = format!("result {}\n", serde_json::to_string(&result)?);
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}
