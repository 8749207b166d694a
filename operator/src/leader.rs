//! Leader election through a `coordination.k8s.io/v1` Lease, so that two replicas never both act.
//!
//! The rules are client-go's: a holder renews every `retry`; another replica takes the Lease
//! only after it has seen the same record unchanged for `lease_duration` by its own clock (no
//! trust in other clocks); every write carries the resourceVersion it read, so two replicas
//! racing for an expired Lease cannot both win. A leader that cannot renew for `renew_deadline`
//! (shorter than `lease_duration`) stops its controllers before anyone else may take over, then
//! campaigns again in the same process: an apiserver outage costs a pause, not a restart.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::Error;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Timing and identity of an election.
#[derive(Clone, Debug)]
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the Lease (the Pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to renew, and to try to acquire.
    pub retry: Duration,
}

impl Election {
    /// client-go's defaults (15 s, 10 s, 2 s).
    pub fn new(namespace: String, name: String, identity: String) -> Election {
        Election {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The Lease record as last seen, and when it was first seen so.
#[derive(Debug)]
struct Seen {
    holder: Option<String>,
    renew: Option<Timestamp>,
    since: Instant,
}

/// What a try to acquire or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the Lease now.
    Held,
    /// Another replica holds it.
    Other(String),
}

struct Elector {
    api: Api<Lease>,
    election: Election,
    seen: Option<Seen>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// One try to acquire or renew.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let e = &self.election;
        let duration = i32::try_from(e.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&e.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.name.clone()),
                    namespace: Some(e.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(e.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(String::new())),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let held_by_us = holder.as_deref() == Some(e.identity.as_str());
        if !held_by_us {
            // Expiry by our own clock: the record must stay unchanged for a lease duration.
            let changed = self
                .seen
                .as_ref()
                .is_none_or(|s| s.holder != holder || s.renew != renew);
            if changed {
                self.seen = Some(Seen {
                    holder: holder.clone(),
                    renew,
                    since: Instant::now(),
                });
            }
            let held_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(e.lease_duration, Duration::from_secs);
            let expired = self
                .seen
                .as_ref()
                .is_some_and(|s| s.since.elapsed() >= held_for);
            if let Some(other) = holder.as_ref().filter(|_| !expired) {
                return Ok(Attempt::Other(other.clone()));
            }
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(e.identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now());
        // `replace` sends the resourceVersion read above: a concurrent write makes it fail.
        match self
            .api
            .replace(&e.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::Other(holder.unwrap_or_default()))
            }
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up (holder cleared) so that another replica need not wait it out.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.election.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(err) = self
            .api
            .replace(&self.election.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(error = %err, "releasing the Lease failed; it expires by itself");
        }
    }
}

/// Runs `work` only while this replica holds the Lease, until `shutdown` or until `work` fails
/// (then the binary exits and is restarted). `work` gets a shutdown signal of its own that
/// fires when leadership is lost; it is started again when leadership is regained.
pub async fn lead<W, F>(
    client: Client,
    election: Election,
    metrics: Metrics,
    shutdown: Shutdown,
    mut work: W,
) -> Result<(), Error>
where
    W: FnMut(Shutdown) -> F,
    F: Future<Output = Result<(), Error>> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &election.namespace),
        election: election.clone(),
        seen: None,
    };
    loop {
        // Campaign.
        loop {
            match elector.attempt().await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::Other(holder)) => {
                    tracing::debug!(%holder, "another replica leads; waiting");
                }
                Err(err) => tracing::warn!(error = %err, "leader election: cannot reach the Lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(election.retry) => {}
                () = shutdown.clone().wait() => return Ok(()),
            }
        }
        tracing::info!(lease = %election.name, identity = %election.identity, "leading");
        metrics.set_leader(true);
        let (stop_work, term) = Shutdown::new();
        let mut running = tokio::spawn(work(term));
        let mut renewed = Instant::now();
        let outcome = loop {
            tokio::select! {
                done = &mut running => break Some(done),
                () = shutdown.clone().wait() => break None,
                () = tokio::time::sleep(election.retry) => {}
            }
            match elector.attempt().await {
                Ok(Attempt::Held) => renewed = Instant::now(),
                Ok(Attempt::Other(holder)) => {
                    tracing::warn!(%holder, "leadership lost to another replica");
                    break None;
                }
                Err(err) => tracing::warn!(error = %err, "renewing the Lease failed"),
            }
            if renewed.elapsed() >= election.renew_deadline {
                tracing::warn!(
                    deadline = ?election.renew_deadline,
                    "the Lease could not be renewed in time: stopping the controllers"
                );
                break None;
            }
        };
        metrics.set_leader(false);
        let done = if let Some(done) = outcome {
            done
        } else {
            let _ = stop_work.send(true);
            running.await
        };
        let result = done.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the controllers panicked");
            Ok(())
        });
        if shutdown.is_requested() || result.is_err() {
            elector.release().await;
            tracing::info!("leadership released");
            return result;
        }
        tracing::info!("campaigning again");
    }
}
