//! Direct channels (docs/bus.md, "Direct channels"): the daemon introduces two instances on
//! this host to each other — a socket pair, one end handed to each over its own channel
//! (`SCM_RIGHTS`; for a Node worker as Node's `net.Socket` handle) — and their sends,
//! requests and replies then go peer to peer. The daemon keeps no end: a channel closes when
//! either process exits, and what was in flight fails at its other end at once.
//!
//! Only an instance that said it takes channels (`{"herd":"direct"}`, which herd's clients
//! send) is introduced; one that asks for a channel (`{"herd":"direct","to":"api:0"}`) gets
//! it, or a refusal with a time to ask again. Order per pair holds because the client sends
//! its request after its last message through the daemon and holds later ones until the
//! answer: the peer gets its end after every earlier message of the asker.

use std::os::fd::OwnedFd;

use herd_proto::worker::{self, ChannelMsg, ToInstance, Unroute};
use serde_json::{json, Value};

use super::super::{SlotState, State};
use crate::bus::Address;

/// Channel ends handed to one instance that it has not said it took: past it, introductions
/// to or from it wait. Each end is an fd open in the daemon, or in flight in the kernel (where
/// the kernel counts it against the daemon's own fd limit), until the instance reads it: an
/// instance that never reads must not pile them up.
const UNTAKEN_ENDS: u32 = 4;
/// When an asker may ask again after a refusal that may pass soon (the peer is starting).
const RETRY_SOON_MS: u64 = 1_000;
/// ... and after one that will not (not one instance, or direct channels off).
const RETRY_LATER_MS: u64 = 60_000;

impl State {
    /// `{"herd":"direct"}` (this instance takes channels), with `to`: also open one.
    pub(in crate::supervisor) fn on_direct(&mut self, pid: u32, d: worker::Direct) {
        let peer = self.bus.peers.entry(pid).or_default();
        peer.direct = true;
        let taken = u32::try_from(d.taken.unwrap_or(0)).unwrap_or(u32::MAX);
        peer.untaken = peer.untaken.saturating_sub(taken);
        let Some(to) = d.to else {
            return;
        };
        if let Err((why, retry_ms)) = self.introduce(pid, &to) {
            self.bus.direct_refused += 1;
            let refusal = ChannelMsg {
                to: Some(to),
                error: Some(why),
                retry_ms: Some(retry_ms),
                ..ChannelMsg::default()
            };
            self.tell(pid, ToInstance::Channel(refusal).to_value());
        }
    }

    /// Makes a socket pair and hands one end to `pid` and one to the instance `to` names.
    fn introduce(&mut self, pid: u32, to: &str) -> Result<(), (String, u64)> {
        let max = self.bus.limits.max_direct_channels;
        if max == 0 {
            return Err((
                "direct channels are off on this host (max_direct_channels = 0 in HERD_HOME/config.toml)".into(),
                RETRY_LATER_MS,
            ));
        }
        let address = Address::parse(to).map_err(|e| (e, RETRY_LATER_MS))?;
        let here = address.host.as_deref().is_none_or(|h| h == self.bus.host);
        if address.app.is_none() || address.instance.is_none() || !here {
            return Err((
                format!("{to:?} is not one instance on this host (app:i): only those get a direct channel"),
                RETRY_LATER_MS,
            ));
        }
        let target = match self.local_targets(&address)[..] {
            [t] => t,
            _ => return Err((format!("no running instance matches {to:?}"), RETRY_SOON_MS)),
        };
        if target == pid {
            return Err((
                "an instance needs no channel to itself".into(),
                RETRY_LATER_MS,
            ));
        }
        if !self.bus.peers.get(&target).is_some_and(|p| p.direct) {
            return Err((
                format!("{to} does not take direct channels (its program does not use herd's bus client, or has not started it yet)"),
                RETRY_SOON_MS,
            ));
        }
        let untaken = |p: u32| self.bus.peers.get(&p).map_or(0, |p| p.untaken);
        if untaken(pid) >= UNTAKEN_ENDS || untaken(target) >= UNTAKEN_ENDS {
            return Err((
                format!("{UNTAKEN_ENDS} channel ends wait to be taken by this instance or {to}: ask again once they are"),
                RETRY_SOON_MS,
            ));
        }
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| {
            (
                format!("no socket pair for a direct channel: {e}"),
                RETRY_SOON_MS,
            )
        })?;
        let (me, peer) = (self.label(pid), self.label(target));
        let base = ChannelMsg {
            max_bytes: Some(self.bus.max_bytes),
            max_channels: Some(max),
            ..ChannelMsg::default()
        };
        let for_target = ChannelMsg {
            peer: Some(me.clone()),
            me: Some(peer.clone()),
            ..base.clone()
        };
        // The peer first: if its queue is full, nothing is handed out.
        if !self.hand(target, for_target, theirs.into()) {
            return Err((
                format!("{to} did not take the channel: its queue is full"),
                RETRY_SOON_MS,
            ));
        }
        let for_asker = ChannelMsg {
            to: Some(to.into()),
            peer: Some(peer),
            me: Some(me),
            ..base
        };
        // Should the asker's own queue be full, the peer's end sees the channel close.
        self.hand(pid, for_asker, mine.into());
        self.bus.direct_opened += 1;
        self.bus.introduced.entry(target).or_default().insert(pid);
        Ok(())
    }

    /// Queues a channel message with its end for an instance: as it is, or for a Node
    /// worker as a handle Node makes a `net.Socket` of (`process.on('message', (m, socket))`).
    fn hand(&mut self, pid: u32, msg: ChannelMsg, end: OwnedFd) -> bool {
        let msg = ToInstance::Channel(msg).to_value();
        let msg = if self.is_node_worker(pid) {
            json!({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": msg})
        } else {
            msg
        };
        let ok = self
            .channel_of(pid)
            .is_some_and(|ch| ch.send(&msg, Some(end)));
        if ok {
            self.bus.routed += 1;
            self.bus.peers.entry(pid).or_default().untaken += 1;
        } else {
            self.bus.dropped += 1;
        }
        ok
    }

    /// A Node worker acknowledged a handle (`NODE_HANDLE_ACK`): a channel end, or a listening
    /// socket (counted the same: it only makes room sooner).
    pub(in crate::supervisor) fn on_handle_ack(&mut self, pid: u32) {
        if let Some(p) = self.bus.peers.get_mut(&pid) {
            p.untaken = p.untaken.saturating_sub(1);
        }
    }

    /// Whether the instance's channel is Node's own (a Node worker's).
    fn is_node_worker(&self, pid: u32) -> bool {
        let Some(&(id, i, _)) = self.pids.get(&pid) else {
            return false;
        };
        let Some(app) = self.apps.get(&id) else {
            return false;
        };
        app.spec.node
            && app
                .slot(i)
                .and_then(|s| s.state.proc())
                .is_some_and(|p| p.pid == pid && !p.primary)
    }

    /// Whether `pid` is the process its address reaches (what [`State::local_targets`]
    /// would route to).
    fn serves(&self, pid: u32) -> bool {
        let Some(&(id, i, _)) = self.pids.get(&pid) else {
            return false;
        };
        self.apps
            .get(&id)
            .and_then(|a| a.slot(i))
            .is_some_and(|slot| match &slot.state {
                SlotState::Online { proc: p }
                | SlotState::Starting { proc: p, .. }
                | SlotState::Reloading { current: p, .. } => p.pid == pid,
                _ => false,
            })
    }

    /// Tells the instances holding channels to one that stopped serving its address (a
    /// reload moved it aside, a stop or a scale-down began) to send through the daemon again.
    pub(in crate::supervisor) fn unroute_moved(&mut self) {
        if self.bus.introduced.is_empty() {
            return;
        }
        let moved: Vec<u32> = self
            .bus
            .introduced
            .keys()
            .copied()
            .filter(|&p| !self.serves(p))
            .collect();
        for target in moved {
            let Some(openers) = self.bus.introduced.remove(&target) else {
                continue;
            };
            // A gone process is not named: its channels closed with it.
            if !self.pids.contains_key(&target) {
                continue;
            }
            let msg: Value = ToInstance::Unroute(Unroute {
                peer: self.label(target),
            })
            .to_value();
            for opener in openers {
                self.tell(opener, msg.clone());
            }
        }
    }
}
