//! Wiring: the metrics endpoint, leader election, and the controllers it guards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::{Error, certs, crds, leader, metrics, nodes, policy};

/// Runs the operator until `shutdown`: the metrics endpoint always, the controllers and the
/// certificate manager only while this replica leads (always without leader election). Each
/// controller finishes the reconciles it has started.
pub async fn run(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    // Settings that cannot work fail the start, not a background task.
    config.certs.check(config.namespace.as_deref())?;
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(
            addr,
            config.metrics.clone(),
            ready.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|source| Error::Metrics { addr, source })?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let work = {
        let (client, config) = (client.clone(), config.clone());
        move |term: Shutdown| controllers(client.clone(), config.clone(), term)
    };
    // Ready once running or campaigning: a standby replica is healthy.
    ready.store(true, Ordering::Relaxed);
    let Some(namespace) = config.lease_namespace.clone() else {
        config.metrics.set_leader(true);
        return work(shutdown).await;
    };
    let identity = config.instance.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
            std::process::id()
        )
    });
    let mut election = leader::Election::new(namespace, config.lease_name.clone(), identity);
    election.lease_duration = Duration::from_secs(config.lease_duration_seconds.max(2));
    election.renew_deadline = Duration::from_secs(
        config
            .lease_renew_deadline_seconds
            .clamp(1, config.lease_duration_seconds.max(2) - 1),
    );
    election.retry = (election.renew_deadline / 4).max(Duration::from_millis(500));
    leader::lead(client, election, config.metrics.clone(), shutdown, work).await
}

/// The controllers and the certificate manager, until `shutdown`.
async fn controllers(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let policies = policy::run(client.clone(), config.clone(), shutdown.clone());
    let nodes = nodes::run(client.clone(), config.clone(), shutdown.clone());
    let certificates = async {
        certs::run(
            client.clone(),
            config.namespace.clone(),
            config.certs.clone(),
            config.metrics.clone(),
            config.retry(),
            shutdown.clone(),
        )
        .await
        .map_err(Error::from)
    };
    let crds = async {
        if config.manage_crds {
            Box::pin(apply_crds(&client, &config, shutdown.clone())).await;
        }
        Ok(())
    };
    tokio::try_join!(crds, policies, nodes, certificates).map(|_| ())
}

/// Brings the CRDs to this release, retrying until it works or `shutdown`. The controllers do
/// not wait: they serve the policies there are, and a failure here is logged as the error it is
/// (new fields of this release would be pruned from policies written meanwhile).
async fn apply_crds(client: &Client, config: &Config, shutdown: Shutdown) {
    let release = crds::release();
    let desired = crds::desired(&release);
    loop {
        match crds::ensure(client, &desired, &release).await {
            Ok(_) => return,
            Err(error) => tracing::error!(
                %error,
                "the CRDs are not this release's: fields it added would be pruned from policies \
                 written now; grant the operator get and patch on the two CRDs (the chart does \
                 with operator.manageCRDs=true), or apply crds/ yourself"
            ),
        }
        let wait = shutdown.clone().wait();
        tokio::select! {
            () = wait => return,
            () = tokio::time::sleep(config.retry()) => {}
        }
    }
}
