//! A scrape of herd's Prometheus endpoint, as the supervisor serves it: herd's own series
//! from its state, and the series of every instance that offered its metrics
//! (`{"herd":"metrics_offer"}`), asked for at once over their channels and merged as they come
//! ([`crate::metrics::Exposition`]). An instance that has not answered by the deadline is left
//! out of this scrape and counted; the scrape never waits longer.

use std::collections::HashMap;
use std::time::Duration;

use herd_proto::worker::{MetricsMsg, ToInstance};
use herd_proto::ProcessStatus;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{State, TimerKey};
use crate::metrics::Exposition;

/// A scrape waiting for instances.
pub(super) struct Scrape {
    /// What is ready of the answer: herd's own series.
    own: String,
    /// The instances' series so far.
    merged: Exposition,
    /// Instances asked and not yet answered: pid → (app, instance).
    waiting: HashMap<u32, (String, String)>,
    reply: oneshot::Sender<String>,
}

/// What the supervisor counts for the endpoint across scrapes.
#[derive(Debug, Default)]
pub(super) struct ScrapeStats {
    /// Instances left out of a scrape because they did not answer in time.
    pub(super) skipped: u64,
    /// Lines of instances' texts that were not valid.
    pub(super) dropped_lines: u64,
    /// Scrapes served.
    pub(super) scrapes: u64,
}

type Labels = Vec<(String, String)>;

impl State {
    /// An instance offered its metrics, or answered a scrape.
    pub(super) fn on_metrics_msg(&mut self, pid: u32, msg: MetricsMsg) {
        match msg {
            MetricsMsg::MetricsOffer => {
                if let Some(p) = self.proc_mut(pid) {
                    p.metrics = true;
                }
            }
            MetricsMsg::Metrics { reply_to, text } => {
                let Some(s) = self.scrapes.get_mut(&reply_to) else {
                    return;
                };
                let Some((app, instance)) = s.waiting.remove(&pid) else {
                    return;
                };
                s.merged.add(
                    &[("app", app.as_str()), ("instance", instance.as_str())],
                    &text,
                );
                if s.waiting.is_empty() {
                    self.finish_scrape(reply_to);
                }
            }
        }
    }

    /// Starts a scrape: herd's series now, the instances' as they answer, all within `timeout`.
    pub(super) fn start_scrape(
        &mut self,
        timeout: Duration,
        sum: bool,
        reply: oneshot::Sender<String>,
    ) {
        self.scrape_id = self.scrape_id.wrapping_add(1);
        let id = self.scrape_id;
        let own = self.own_series();
        let mut waiting = HashMap::new();
        let ask = serde_json::to_value(ToInstance::Scrape { id }).unwrap_or(Value::Null);
        for app in self.apps.values() {
            for s in &app.slots {
                let Some(p) = s.state.proc().filter(|p| p.metrics) else {
                    continue;
                };
                if p.channel.as_ref().is_some_and(|ch| ch.send(&ask, None)) {
                    waiting.insert(p.pid, (app.spec.name.clone(), s.index.to_string()));
                } else {
                    self.scrape_stats.skipped += 1;
                }
            }
        }
        self.scrapes.insert(
            id,
            Scrape {
                own,
                merged: Exposition::new(sum),
                waiting,
                reply,
            },
        );
        if self.scrapes.get(&id).is_some_and(|s| s.waiting.is_empty()) {
            self.finish_scrape(id);
        } else {
            self.timers
                .set(TimerKey::Scrape { id }, Instant::now() + timeout);
        }
    }

    /// Answers scrape `id` with what it has (the deadline came, or every instance answered).
    pub(super) fn finish_scrape(&mut self, id: u64) {
        self.timers.cancel(TimerKey::Scrape { id });
        let Some(s) = self.scrapes.remove(&id) else {
            return;
        };
        self.scrape_stats.skipped += s.waiting.len() as u64;
        self.scrape_stats.dropped_lines += s.merged.dropped_lines;
        self.scrape_stats.scrapes += 1;
        let mut out = s.own;
        s.merged.write(&mut out);
        let _ = s.reply.send(out);
    }

    /// herd's own series: instances, apps, the bus, the daemon, the endpoint.
    fn own_series(&mut self) -> String {
        let mut reg = Registry::with_prefix("herd");
        let up = Family::<Labels, Gauge>::default();
        let restarts = Family::<Labels, Counter>::default();
        let cpu = Family::<Labels, Counter<f64>>::default();
        let rss = Family::<Labels, Gauge>::default();
        let uptime = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let exit = Family::<Labels, Gauge>::default();
        let reloads = Family::<Labels, Counter>::default();
        let pm2 = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let routing = Family::<Labels, Counter>::default();
        let ticks = procfs::ticks_per_second() as f64;
        for app in self.apps.values() {
            let name = app.spec.name.clone();
            for s in app.slots.iter().chain(app.primary.as_ref()) {
                let inst = if s.index == super::primary::PRIMARY {
                    "primary".to_string()
                } else {
                    s.index.to_string()
                };
                let l = vec![("app".to_string(), name.clone()), ("instance".into(), inst)];
                let online = s.state.status() == ProcessStatus::Online;
                up.get_or_create(&l).set(i64::from(online));
                restarts.get_or_create(&l).inc_by(u64::from(s.restarts));
                if let Some(code) = s.last_exit.as_ref().and_then(|e| e.code) {
                    exit.get_or_create(&l).set(i64::from(code));
                }
                if let Some(p) = s.state.proc() {
                    if let Some(sample) = self.os.sample(p.pid) {
                        cpu.get_or_create(&l)
                            .inc_by(sample.cpu_ticks as f64 / ticks.max(1.0));
                        rss.get_or_create(&l)
                            .set(i64::try_from(sample.rss_bytes).unwrap_or(i64::MAX));
                    }
                    uptime
                        .get_or_create(&l)
                        .set(p.since.elapsed().as_secs_f64());
                    // PM2's `@pm2/io` metrics, where their value is a number.
                    for (metric, m) in p.pm2.iter().flat_map(|io| io.metrics.iter()) {
                        let value = match m.get("value") {
                            Some(Value::Number(n)) => n.as_f64(),
                            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
                            _ => None,
                        };
                        if let Some(v) = value {
                            let mut ml = l.clone();
                            ml.push(("metric".into(), metric.clone()));
                            pm2.get_or_create(&ml).set(v);
                        }
                    }
                }
            }
            for (result, n) in [("ok", app.reloads.0), ("failed", app.reloads.1)] {
                reloads
                    .get_or_create(&vec![
                        ("app".to_string(), name.clone()),
                        ("result".into(), result.into()),
                    ])
                    .inc_by(n);
            }
            routing
                .get_or_create(&vec![("app".to_string(), name.clone())])
                .inc_by(app.routing_changes);
        }
        reg.register("instance_up", "1 if the instance is online", up);
        reg.register(
            "instance_restarts",
            "Restarts of the instance's slot",
            restarts,
        );
        reg.register(
            "instance_cpu_seconds",
            "CPU time of the instance's process",
            cpu,
        );
        reg.register(
            "instance_memory_bytes",
            "Resident memory of the instance's process",
            rss,
        );
        reg.register(
            "instance_uptime_seconds",
            "Time since the instance's process started",
            uptime,
        );
        reg.register(
            "instance_last_exit_code",
            "Exit code of the slot's last process that exited with one",
            exit,
        );
        reg.register(
            "app_reloads",
            "Rolling reloads of the app, by result",
            reloads,
        );
        reg.register(
            "pm2_metric",
            "Numeric metrics instances report with PM2's @pm2/io (io.metric, io.counter, ...)",
            pm2,
        );
        reg.register(
            "app_routing_changes",
            "Times the set of instances routed to changed",
            routing,
        );
        let bus = self.bus_stats();
        let bus_routed = Counter::<u64>::default();
        bus_routed.inc_by(bus.routed);
        reg.register("bus_routed", "Messages the bus routed", bus_routed);
        let dropped = Family::<Labels, Counter>::default();
        for (cause, n) in [
            ("slow_consumer", bus.dropped),
            ("rejected", bus.rejected),
            ("refused_by_limit", bus.refused),
            ("no_recipient", bus.no_recipient),
            ("broker_lost", bus.lost),
        ] {
            dropped
                .get_or_create(&vec![("cause".to_string(), cause.to_string())])
                .inc_by(n);
        }
        reg.register(
            "bus_dropped",
            "Messages the bus did not deliver, by cause",
            dropped,
        );
        let reconnects = Counter::<u64>::default();
        reconnects.inc_by(bus.reconnects);
        reg.register(
            "bus_broker_reconnects",
            "Times the broker connection was made again",
            reconnects,
        );
        if let Some(me) = crate::stats::sample(std::process::id()) {
            let cpu = Counter::<f64>::default();
            cpu.inc_by(me.cpu_ticks as f64 / ticks.max(1.0));
            reg.register("daemon_cpu_seconds", "CPU time of the herd daemon", cpu);
            let rss = Gauge::<i64>::default();
            rss.set(i64::try_from(me.rss_bytes).unwrap_or(i64::MAX));
            reg.register(
                "daemon_memory_bytes",
                "Resident memory of the herd daemon",
                rss,
            );
        }
        let skipped = Counter::<u64>::default();
        skipped.inc_by(self.scrape_stats.skipped);
        reg.register(
            "scrape_instances_skipped",
            "Instances left out of a scrape because they did not answer in time",
            skipped,
        );
        let dropped_lines = Counter::<u64>::default();
        dropped_lines.inc_by(self.scrape_stats.dropped_lines);
        reg.register(
            "scrape_invalid_lines",
            "Lines of instances' metrics that were not valid and were left out",
            dropped_lines,
        );
        let mut out = String::new();
        let _ = encode_registry(&mut out, &reg);
        out
    }

    /// The process `pid`, wherever it is in its app.
    pub(super) fn proc_mut(&mut self, pid: u32) -> Option<&mut super::Proc> {
        let &(id, i, role) = self.pids.get(&pid)?;
        super::cluster::find_proc(self.apps.get_mut(&id)?, i, role, pid)
    }
}
