//! The shutdown signal the controllers share.

use std::future::Future;

/// A shutdown signal shared by the controllers: resolves once the sender fires or is dropped.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal and its trigger (send `true`, or drop the sender, to shut down).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves when shutdown is requested.
    pub fn wait(self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0;
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn shutdown_resolves_on_request_or_when_the_trigger_is_dropped() {
        let (stop, shutdown) = Shutdown::new();
        let waiting = tokio::spawn(shutdown.clone().wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        stop.send(true).unwrap();
        waiting.await.unwrap();

        let (stop, shutdown) = Shutdown::new();
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("a dropped trigger shuts down");
    }
}
