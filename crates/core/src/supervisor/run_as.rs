//! What the supervisor does for an app that runs as another user (`--uid`, [`crate::user`]):
//! the user resolved at each start (a user removed since is an error of that start), the
//! login variables put into the instance's environment, and the Node files such an instance
//! loads, from a directory it can read. The switch itself is the child's
//! ([`crate::spawn::Credentials`]).

use super::{StartError, State};
use crate::node_shims::{self, Installed};
use crate::spawn::Credentials;
use crate::user::{self, RunAs};

impl State {
    /// Who app `id`'s processes run as; `None`: the daemon's user.
    pub(super) fn run_as(&self, id: u32) -> Result<Option<RunAs>, StartError> {
        let Some(app) = self.apps.get(&id) else {
            return Err(StartError::Gone(format!("app {id}")));
        };
        user::resolve(app.spec.uid.as_deref(), app.spec.gid.as_deref())
            .map_err(|e| StartError::Program(e.to_string()))
    }

    /// The Node files for a process that runs as `run_as`: the daemon's own (in its 0700
    /// `HERD_HOME`) for its own user, otherwise a copy that user can read, written the first
    /// time a Node process (`node`) of another user needs it. `None`: Node processes run
    /// without them (logged).
    pub(super) fn shims_for(&mut self, run_as: Option<&RunAs>, node: bool) -> Option<Installed> {
        if !is_other_user(run_as) || !node {
            return self.node_shims.clone();
        }
        if self.shared_shims.is_none() {
            let private = self.node_shims.as_ref()?.dir().to_path_buf();
            let dir = node_shims::shared_dir(&private);
            match node_shims::install_shared(&dir) {
                Ok(s) => self.shared_shims = Some(s),
                Err(e) => tracing::warn!(
                    "cannot write herd's Node preload for apps of another user into {} ({e}); their Node workers run without it",
                    dir.display()
                ),
            }
        }
        self.shared_shims.clone()
    }
}

/// Whether a process of `run_as` runs as another user than the daemon (and so cannot enter
/// the daemon's `HERD_HOME`).
pub(super) fn is_other_user(run_as: Option<&RunAs>) -> bool {
    run_as.is_some_and(|r| r.uid != nix::unistd::geteuid().as_raw())
}

/// The ids the child switches to, when it switches.
pub(super) fn credentials(run_as: Option<&RunAs>) -> Option<Credentials> {
    run_as.filter(|r| r.switch).map(|r| Credentials {
        uid: r.uid,
        gid: r.gid,
        groups: r.groups.clone(),
    })
}

/// Puts `run_as`'s login variables into `env`, over the captured ones but not over those the
/// app declares itself (`--env HOME=…`).
pub(super) fn login_env(
    env: &mut Vec<(String, String)>,
    run_as: Option<&RunAs>,
    declared: &[String],
) {
    let Some(r) = run_as else {
        return;
    };
    for (k, v) in r.login_env() {
        if declared.contains(&k) {
            continue;
        }
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
}
