//! Which log files a slot writes (docs/logs.md): herd's own
//! `HERD_HOME/logs/<app>-<i>.out|.err`, or the files PM2's options name (`out_file`,
//! `error_file`, `log_file`, `merge_logs`, `disable_logs`), with PM2's naming per instance.
//! A path is open once however many slots, streams or apps write it, so a merged file rotates
//! once and takes whole lines under one lock. How lines are written is `logs::LineFormat`'s
//! business, not this module's.
//!
//! A file the user named that cannot be opened never fails the app: its output goes to herd's
//! own file for that instance, which says why in its first line (`herd logs` shows it), and the
//! daemon's log says so too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use herd_proto::{AppSpec, LogSpec, LogStream};

use super::primary::PRIMARY;
use super::{log_path, write_note, State};
use crate::logs::{LogFile, SharedLog};

/// Every log file open, by path (weak: the slots and pumps that write a file keep it open).
pub(super) type OpenLogs = std::cell::RefCell<HashMap<PathBuf, Weak<Mutex<LogFile>>>>;

/// The files one slot writes.
pub(super) struct SlotLogs {
    pub(super) out: SharedLog,
    pub(super) err: SharedLog,
    /// PM2's `log_file`: both streams.
    pub(super) both: Option<SharedLog>,
}

/// A path as PM2 names it for one instance: unless the logs are merged, a path ending in
/// `.log` gets `-<instance>` before it, replacing a `-<digits>` already there (PM2's
/// `/-[0-9]+\.log$|\.log$/` → `-<pm_id>.log`); other paths are shared by all instances.
pub fn instance_path(path: &str, instance: u32, merge: bool) -> String {
    let Some(stem) = path.strip_suffix(".log").filter(|_| !merge) else {
        return path.to_string();
    };
    let stem = match stem.rsplit_once('-') {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => stem,
    };
    if instance == PRIMARY {
        format!("{stem}-primary.log")
    } else {
        format!("{stem}-{instance}.log")
    }
}

/// Where a path of the spec is for `instance`: `None` for `/dev/null`; a relative path is
/// taken from herd's log folder (the CLI makes the user's paths absolute from the app's
/// directory; `--log` with no path is `<app>.log` there).
fn resolve(log_dir: &Path, value: &str, instance: u32, merge: bool) -> Option<PathBuf> {
    if value == LogSpec::NULL || value == "NULL" {
        return None;
    }
    Some(log_dir.join(instance_path(value, instance, merge)))
}

impl State {
    /// Opens the files slot `index` of an app with `spec` writes.
    ///
    /// # Errors
    /// When herd's own file in `HERD_HOME/logs` cannot be opened (a named file that cannot be
    /// opened falls back to it).
    pub(super) fn open_slot_logs(&self, spec: &AppSpec, index: u32) -> Result<SlotLogs, String> {
        let log = &spec.log;
        let discard = || Arc::new(Mutex::new(LogFile::discard(log)));
        let stream = |s: LogStream| -> Result<SharedLog, String> {
            if log.disabled {
                return Ok(discard());
            }
            let named = match s {
                LogStream::Out => log.out_file.as_deref(),
                LogStream::Err => log.error_file.as_deref(),
            };
            let Some(named) = named else {
                return self.open_shared(self.own_path(spec, index, s), spec, index, s, false);
            };
            let Some(path) = resolve(&self.cfg.log_dir, named, index, log.merge) else {
                return Ok(discard());
            };
            match self.open_shared(path.clone(), spec, index, s, true) {
                Ok(f) => Ok(f),
                Err(why) => {
                    let own = self.own_path(spec, index, s);
                    tracing::warn!(app = %spec.name, instance = index, "{why}; this output goes to {} instead", own.display());
                    let f = self.open_shared(own, spec, index, s, false)?;
                    write_note(
                        &f,
                        &format!(
                            "[herd] {why}; instance output is written here instead until then"
                        ),
                    );
                    Ok(f)
                }
            }
        };
        let out = stream(LogStream::Out)?;
        let err = stream(LogStream::Err)?;
        let both = match log.log_file.as_deref().filter(|_| !log.disabled) {
            None => None,
            Some(named) => match resolve(&self.cfg.log_dir, named, index, log.merge) {
                None => None,
                Some(path) => match self.open_shared(path, spec, index, LogStream::Out, true) {
                    Ok(f) => Some(f),
                    Err(why) => {
                        tracing::warn!(app = %spec.name, instance = index, "{why}; the out and err files still get the output");
                        write_note(
                            &err,
                            &format!("[herd] {why}; the combined log is not written until then"),
                        );
                        None
                    }
                },
            },
        };
        Ok(SlotLogs { out, err, both })
    }

    /// herd's own file of a stream: `<app>-<i>.out|.err`, or `<app>.out|.err` when merged.
    fn own_path(&self, spec: &AppSpec, index: u32, s: LogStream) -> PathBuf {
        if spec.log.merge {
            let ext = match s {
                LogStream::Out => "out",
                LogStream::Err => "err",
            };
            return self.cfg.log_dir.join(format!("{}.{ext}", spec.name));
        }
        log_path(&self.cfg.log_dir, &spec.name, index, s)
    }

    /// The open file at `path`, or the file opened; `named` files are the user's (made with
    /// their folder, links followed), the others herd's own. The error names the path and
    /// the fix.
    fn open_shared(
        &self,
        path: PathBuf,
        spec: &AppSpec,
        index: u32,
        s: LogStream,
        named: bool,
    ) -> Result<SharedLog, String> {
        let mut open = self.open_logs.borrow_mut();
        open.retain(|_, f| f.strong_count() > 0);
        if let Some(f) = open.get(&path).and_then(Weak::upgrade) {
            if let Ok(mut file) = f.lock() {
                file.configure(&spec.log);
            }
            return Ok(f);
        }
        let opened = if named {
            LogFile::open_named(path.clone(), &spec.log)
        } else {
            LogFile::open(path.clone(), &spec.log)
        };
        let file = opened.map_err(|e| {
            format!(
                "cannot open log file {}: {e}; fix the path (or its folder's permissions) in the app's log options and `herd apply` or `herd restart {}`",
                path.display(),
                spec.name
            )
        })?;
        let f = Arc::new(Mutex::new(file.announce(
            self.logs.clone(),
            Arc::from(spec.name.as_str()),
            index,
            s,
        )));
        open.insert(path, Arc::downgrade(&f));
        Ok(f)
    }

    /// After `herd apply` changed an app's log options: its slots take the files of the new
    /// spec, which the next processes write (the running ones keep theirs until they exit).
    pub(super) fn reopen_slot_logs(&mut self, id: u32) {
        let Some(app) = self.apps.get(&id) else {
            return;
        };
        let spec = app.spec.clone();
        let indexes: Vec<u32> = app.all_slots().map(|s| s.index).collect();
        let mut fresh = Vec::new();
        for i in indexes {
            match self.open_slot_logs(&spec, i) {
                Ok(logs) => fresh.push((i, logs)),
                Err(e) => {
                    tracing::warn!(app = %spec.name, instance = i, "{e}; it keeps its log files")
                }
            }
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        for (i, logs) in fresh {
            let slot = if i == PRIMARY {
                app.primary.as_mut()
            } else {
                app.slots.get_mut(i as usize)
            };
            if let Some(slot) = slot {
                slot.out = logs.out;
                slot.err = logs.err;
                slot.both = logs.both;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_per_instance_as_pm2_names_them() {
        assert_eq!(instance_path("/l/out.log", 2, false), "/l/out-2.log");
        assert_eq!(instance_path("/l/out-7.log", 2, false), "/l/out-2.log");
        assert_eq!(instance_path("/l/a-b.log", 0, false), "/l/a-b-0.log");
        assert_eq!(
            instance_path("/l/out.log", PRIMARY, false),
            "/l/out-primary.log"
        );
        // Merged, or not ending in .log: one file for all.
        assert_eq!(instance_path("/l/out.log", 2, true), "/l/out.log");
        assert_eq!(instance_path("/l/out.txt", 2, false), "/l/out.txt");
    }
}
