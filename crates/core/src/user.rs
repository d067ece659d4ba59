//! Running an app's instances as another user (`--uid` / `--gid`, PM2's `uid`, `user` and
//! `gid`): a name or a number resolved to the ids, the supplementary groups and the login
//! variables (`HOME`, `USER`, `LOGNAME`, `SHELL`) the instance gets, as systemd's `User=`
//! gives them, and the refusal when this daemon cannot switch users.
//!
//! It resolves; it does not switch. The switch (`setgroups`, `setgid`, `setuid`, in that
//! order) happens in the forked child ([`crate::spawn`]), which must not allocate: the user
//! database is read here, before `fork`, because NSS allocates and may take locks.

use nix::unistd::{Gid, Group, Uid, User};

/// Who an app's instances run as, resolved from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The supplementary groups (the primary one included), as `initgroups` would set them.
    pub groups: Vec<u32>,
    /// The user's entry in the user database; `None` for a bare number without one.
    pub login: Option<Login>,
    /// Whether the daemon switches credentials in the child: false when they are already
    /// the daemon's own (a daemon not run as root may name itself).
    pub switch: bool,
}

/// What the user database says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

impl RunAs {
    /// The variables an instance of this user gets in place of the captured ones, as
    /// systemd's `User=` sets them: `HOME`, `USER`, `LOGNAME`, `SHELL`. None for a uid that
    /// has no entry in the user database.
    pub fn login_env(&self) -> Vec<(String, String)> {
        match &self.login {
            Some(l) => vec![
                ("HOME".into(), l.home.clone()),
                ("USER".into(), l.name.clone()),
                ("LOGNAME".into(), l.name.clone()),
                ("SHELL".into(), l.shell.clone()),
            ],
            None => Vec::new(),
        }
    }

    /// How the user is shown: `alice (uid 1001, gid 1001)`.
    pub fn shown(&self) -> String {
        match &self.login {
            Some(l) => format!("{} (uid {}, gid {})", l.name, self.uid, self.gid),
            None => format!("uid {}, gid {}", self.uid, self.gid),
        }
    }
}

/// Why an app's user or group cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No user of that name.
    #[error("there is no user {0:?} on this machine; check the name (getent passwd {0}), create the user, or give a uid number")]
    UnknownUser(String),
    /// No group of that name.
    #[error("there is no group {0:?} on this machine; check the name (getent group {0}), create the group, or give a gid number")]
    UnknownGroup(String),
    /// A bare uid with no entry: its group is unknown.
    #[error("uid {0} has no entry in the user database, so herd does not know its group; give --gid (gid in app files) too")]
    NoGroupFor(u32),
    /// The daemon cannot switch users.
    #[error("herd's daemon runs as uid {daemon}; only a daemon run as root can start apps as another user ({wanted}); run herd as root, or leave out --uid/--gid")]
    NotRoot {
        /// The daemon's uid.
        daemon: u32,
        /// Who the app asked for.
        wanted: String,
    },
    /// The user database could not be read.
    #[error("cannot read the user database for {what}: {source}")]
    Lookup {
        /// The name or number looked up.
        what: String,
        /// Why.
        source: nix::errno::Errno,
    },
}

/// Who an app with these `uid` / `gid` fields runs as; `None` when both are absent (the
/// daemon's own user, as before).
///
/// # Errors
/// [`UserError`]: an unknown name, a bare uid without a group, or a daemon that is not root
/// asked for other ids than its own.
pub fn resolve(uid: Option<&str>, gid: Option<&str>) -> Result<Option<RunAs>, UserError> {
    let uid = uid.map(str::trim).filter(|s| !s.is_empty());
    let gid = gid.map(str::trim).filter(|s| !s.is_empty());
    if uid.is_none() && gid.is_none() {
        return Ok(None);
    }
    let me = nix::unistd::geteuid();
    let (user_id, entry) = match uid {
        Some(u) => user(u)?,
        None => (me, lookup_uid(me)?),
    };
    let group_id = match (gid, &entry) {
        (Some(g), _) => group(g)?,
        (None, Some(e)) => e.gid,
        (None, None) => return Err(UserError::NoGroupFor(user_id.as_raw())),
    };
    let groups = match &entry {
        // initgroups(3): the groups that list the user, and the primary one.
        Some(e) => match std::ffi::CString::new(e.name.as_bytes()) {
            Ok(name) => nix::unistd::getgrouplist(&name, group_id)
                .map_err(|source| UserError::Lookup {
                    what: format!("the groups of {}", e.name),
                    source,
                })?
                .into_iter()
                .map(Gid::as_raw)
                .collect(),
            Err(_) => vec![group_id.as_raw()],
        },
        None => vec![group_id.as_raw()],
    };
    let login = entry.map(|e| Login {
        name: e.name,
        home: e.dir.display().to_string(),
        shell: e.shell.display().to_string(),
    });
    let run_as = RunAs {
        uid: user_id.as_raw(),
        gid: group_id.as_raw(),
        groups,
        login,
        switch: me.is_root(),
    };
    if !me.is_root() && (user_id != me || group_id != nix::unistd::getegid()) {
        return Err(UserError::NotRoot {
            daemon: me.as_raw(),
            wanted: run_as.shown(),
        });
    }
    Ok(Some(run_as))
}

/// A user by name or number, with its entry (a number may have none).
fn user(u: &str) -> Result<(Uid, Option<User>), UserError> {
    if let Ok(n) = u.parse::<u32>() {
        let id = Uid::from_raw(n);
        return Ok((id, lookup_uid(id)?));
    }
    match User::from_name(u) {
        Ok(Some(e)) => Ok((e.uid, Some(e))),
        Ok(None) => Err(UserError::UnknownUser(u.to_string())),
        Err(source) => Err(UserError::Lookup {
            what: format!("user {u:?}"),
            source,
        }),
    }
}

fn lookup_uid(id: Uid) -> Result<Option<User>, UserError> {
    User::from_uid(id).map_err(|source| UserError::Lookup {
        what: format!("uid {id}"),
        source,
    })
}

/// A group by name or number (a number need not have an entry).
fn group(g: &str) -> Result<Gid, UserError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(g) {
        Ok(Some(e)) => Ok(e.gid),
        Ok(None) => Err(UserError::UnknownGroup(g.to_string())),
        Err(source) => Err(UserError::Lookup {
            what: format!("group {g:?}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_is_the_daemons_own_user() {
        assert_eq!(resolve(None, None).unwrap(), None);
        assert_eq!(resolve(Some(" "), None).unwrap(), None);
    }

    #[test]
    fn the_daemons_own_user_by_number_is_always_allowed() {
        let me = nix::unistd::geteuid().as_raw();
        let got = resolve(Some(&me.to_string()), None).unwrap().unwrap();
        assert_eq!(got.uid, me);
        if let Some(login) = &got.login {
            assert!(got.groups.contains(&got.gid));
            let env = got.login_env();
            assert!(env.contains(&("USER".to_string(), login.name.clone())));
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_fix() {
        let e = resolve(Some("no-such-user-herd-test"), None).unwrap_err();
        assert!(matches!(e, UserError::UnknownUser(_)), "{e}");
        assert!(e.to_string().contains("getent passwd"), "{e}");
        let me = nix::unistd::geteuid().as_raw().to_string();
        let e = resolve(Some(&me), Some("no-such-group-herd-test")).unwrap_err();
        assert!(e.to_string().contains("no group"), "{e}");
    }

    #[test]
    fn a_daemon_not_run_as_root_refuses_other_users() {
        if nix::unistd::geteuid().is_root() {
            return;
        }
        let e = resolve(Some("0"), None).unwrap_err();
        assert!(e.to_string().contains("only a daemon run as root"), "{e}");
    }
}
