//! The relay's counters, and Prometheus text on an optional HTTP port.
//!
//! Every metric is an aggregate: queued envelopes and bytes, deposits, deliveries, acks,
//! expiries, refusals by reason, open connections. No label names a mailbox, a client or
//! anything from inside an envelope.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handoff_protocol::relay::Refusal;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::storage::Totals;

/// Label set of a refusal: its reason only.
type ReasonLabel = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub deposits: Counter,
    pub deliveries: Counter,
    pub acked: Counter,
    pub expired: Counter,
    refusals: Family<ReasonLabel, Counter>,
    pub connections: Gauge,
    pub connections_refused: Counter,
    queued_envelopes: Gauge,
    queued_bytes: Gauge,
    totals: Arc<Totals>,
}

impl Metrics {
    pub fn new(totals: Arc<Totals>) -> Self {
        let mut registry = Registry::with_prefix("handoff_relay");
        let metrics = Self {
            registry: Registry::default(),
            deposits: Counter::default(),
            deliveries: Counter::default(),
            acked: Counter::default(),
            expired: Counter::default(),
            refusals: Family::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            queued_envelopes: Gauge::default(),
            queued_bytes: Gauge::default(),
            totals,
        };
        let m = &metrics;
        registry.register("deposits", "Envelopes stored", m.deposits.clone());
        registry.register(
            "deliveries",
            "Envelopes handed to their recipient (again after a reconnect)",
            m.deliveries.clone(),
        );
        registry.register(
            "acked",
            "Envelopes deleted after their recipient acknowledged them",
            m.acked.clone(),
        );
        registry.register(
            "expired",
            "Envelopes deleted unclaimed at the end of their TTL",
            m.expired.clone(),
        );
        registry.register(
            "refusals",
            "Hellos and deposits refused, by reason",
            m.refusals.clone(),
        );
        registry.register("connections", "Connections open now", m.connections.clone());
        registry.register(
            "connections_refused",
            "Connections refused before their handshake: over the cap of pending, open or per-client connections",
            m.connections_refused.clone(),
        );
        registry.register(
            "queued_envelopes",
            "Envelopes waiting for their recipient",
            m.queued_envelopes.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes charged for envelopes waiting for their recipient (bodies and a fixed cost each)",
            m.queued_bytes.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&vec![("reason", why.name())])
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn text(&self) -> String {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.queued_envelopes
            .set(gauge(self.totals.envelopes.load(Ordering::Relaxed)));
        self.queued_bytes
            .set(gauge(self.totals.bytes.load(Ordering::Relaxed)));
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Answers `GET /metrics` on `listener` until `stop` turns true; anything else gets a 404.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = crate::descriptors::AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let mut socket = match accepted {
            Ok((socket, _)) => {
                backoff.reset();
                socket
            }
            Err(e) => {
                backoff.wait(&e, "metrics listener").await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let line = String::from_utf8_lossy(&request[..n]);
            let response = if line.starts_with("GET /metrics") {
                let body = metrics.text();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
