//! What `herd monit` knows, and how keys and the daemon's replies change it: the rows as last
//! listed, a bounded history of CPU and memory per instance, the last log lines of each
//! instance, the selected row and the question being asked. No terminal and no daemon here:
//! drawing is `draw`'s, talking to the daemon and the terminal is `monit`'s, so all of this is
//! driven by plain method calls in the tests.

use std::collections::{HashMap, HashSet, VecDeque};

use herd_proto::{AppInfo, AppStatus, Command, LogStream, ProcessInfo, Reply, ScaleTo};

/// Samples of CPU and memory kept per instance (one a second while monit runs).
pub const HISTORY: usize = 60;
/// Log lines kept per instance.
pub const LOG_LINES: usize = 200;
/// Rows moved by PageUp and PageDown.
const PAGE: usize = 10;

/// Which row: an instance (`Some(n)`, the primary being [`herd_proto::AppSpec::PRIMARY`]) or
/// an app that has no instance slot (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub app: String,
    pub instance: Option<u32>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: RowKey,
    pub app_status: AppStatus,
    /// The slot's state, for an instance or primary row.
    pub process: Option<ProcessInfo>,
    /// The app's first port, or its first listening address, or `-`.
    pub port: String,
}

/// A key as monit reads it (the terminal's key events are translated into these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    /// Ctrl-C: quits, whatever is being asked.
    Interrupt,
    Char(char),
}

/// Something monit does to an app, once confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Restart { app: String },
    Reload { app: String },
    Scale { app: String, by: i32, from: u32 },
    Stop { app: String },
}

impl Action {
    pub fn app(&self) -> &str {
        match self {
            Action::Restart { app }
            | Action::Reload { app }
            | Action::Scale { app, .. }
            | Action::Stop { app } => app,
        }
    }

    /// The control command that carries it out.
    pub fn command(&self) -> Command {
        let target = self.app().to_string();
        match self {
            Action::Restart { .. } => Command::Restart { target, env: None },
            Action::Reload { .. } => Command::Reload { target, env: None },
            Action::Scale { by, .. } => Command::Scale {
                target,
                to: ScaleTo::Delta(*by),
            },
            Action::Stop { .. } => Command::Stop { target },
        }
    }

    /// The confirmation question.
    pub fn question(&self) -> String {
        match self {
            Action::Restart { app } => format!("Restart every instance of {app} at once?"),
            Action::Reload { app } => {
                format!("Reload {app} (one instance at a time, no request dropped)?")
            }
            Action::Scale { app, by, from } => {
                let to = i64::from(*from) + i64::from(*by);
                format!("Scale {app} from {from} to {to} instances?")
            }
            Action::Stop { app } => format!("Stop {app} (its port closes)?"),
        }
    }

    /// What is shown while it runs.
    pub fn doing(&self) -> String {
        match self {
            Action::Restart { app } => format!("restarting {app}…"),
            Action::Reload { app } => format!("reloading {app}…"),
            Action::Scale { app, by, .. } => format!("scaling {app} by {by:+}…"),
            Action::Stop { app } => format!("stopping {app}…"),
        }
    }

    /// What is shown once it is done.
    fn done(&self) -> String {
        match self {
            Action::Restart { app } => format!("{app} restarted"),
            Action::Reload { app } => format!("{app} reloaded"),
            Action::Scale { app, by, from } => {
                let to = i64::from(*from) + i64::from(*by);
                format!("{app} scaled to {to}")
            }
            Action::Stop { app } => format!("{app} stopped"),
        }
    }
}

/// What the caller must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    Quit,
    Run(Action),
}

/// Whether monit is browsing or waiting for a yes or no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Browse,
    Confirm(Action),
}

/// The line above the help line: what happened last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Error(String),
}

/// CPU (percent of one core) and memory (bytes) samples of one instance, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    pub cpu: VecDeque<f64>,
    pub memory: VecDeque<u64>,
}

impl Samples {
    fn push(&mut self, p: &ProcessInfo) {
        if let Some(c) = p.cpu_percent {
            bounded_push(&mut self.cpu, c, HISTORY);
        }
        if let Some(m) = p.memory_bytes {
            bounded_push(&mut self.memory, m, HISTORY);
        }
    }
}

/// One line of an instance's output, made safe to draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
}

/// The whole state of the screen.
#[derive(Debug)]
pub struct Monit {
    rows: Vec<Row>,
    apps: usize,
    selected: usize,
    history: HashMap<RowKey, Samples>,
    logs: HashMap<RowKey, VecDeque<LogLine>>,
    mode: Mode,
    notice: Option<Notice>,
    warnings: Vec<String>,
    /// Actions sent and not yet answered.
    running: usize,
}

impl Default for Monit {
    fn default() -> Self {
        Self::new()
    }
}

impl Monit {
    pub fn new() -> Self {
        Self {
            rows: Vec::new(),
            apps: 0,
            selected: 0,
            history: HashMap::new(),
            logs: HashMap::new(),
            mode: Mode::Browse,
            notice: None,
            warnings: Vec::new(),
            running: 0,
        }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn app_count(&self) -> usize {
        self.apps
    }

    /// Index of the selected row (0 when there is none).
    pub fn selected(&self) -> usize {
        self.selected
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref()
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn history(&self, key: &RowKey) -> Option<&Samples> {
        self.history.get(key)
    }

    pub fn logs(&self, key: &RowKey) -> Option<&VecDeque<LogLine>> {
        self.logs.get(key)
    }

    /// A fresh `list`: new rows, one more sample per running instance. The selection stays
    /// on the same instance when it is still listed, else on the same line.
    pub fn on_apps(&mut self, apps: &[AppInfo], warnings: Vec<String>) {
        let keep = self.selected_row().map(|r| r.key.clone());
        self.rows = rows_of(apps);
        self.apps = apps.len();
        self.warnings = warnings;
        if let Some(at) = keep.and_then(|k| self.rows.iter().position(|r| r.key == k)) {
            self.selected = at;
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        let listed: HashSet<&RowKey> = self.rows.iter().map(|r| &r.key).collect();
        self.history.retain(|k, _| listed.contains(k));
        for r in &self.rows {
            if let Some(p) = r.process.as_ref().filter(|p| p.pid.is_some()) {
                self.history.entry(r.key.clone()).or_default().push(p);
            }
        }
        // Lines of an instance not listed (yet: it may just have started) are kept; those
        // of an app that is gone are not.
        let names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        self.logs.retain(|k, _| names.contains(k.app.as_str()));
        if let Some(Notice::Error(e)) = &self.notice {
            if e.starts_with(LIST_FAILED) {
                self.notice = None;
            }
        }
    }

    /// `list` failed (the daemon went away, …): what was listed is not shown as if it still
    /// ran.
    pub fn on_list_failed(&mut self, why: &str) {
        self.on_apps(&[], Vec::new());
        self.notice = Some(Notice::Error(format!("{LIST_FAILED}{why}")));
    }

    /// A log line of an instance.
    pub fn on_log(&mut self, app: &str, instance: u32, stream: LogStream, line: &str) {
        let text = printable(line);
        // The daemon's own note to a follower that lagged comes as app `herd`.
        if app == "herd"
            && text.starts_with("[herd]")
            && !self.rows.iter().any(|r| r.key.app == app)
        {
            self.notice = Some(Notice::Error(text));
            return;
        }
        let key = RowKey {
            app: app.to_string(),
            instance: Some(instance),
        };
        bounded_push(
            self.logs.entry(key).or_default(),
            LogLine { stream, text },
            LOG_LINES,
        );
    }

    /// The log stream stopped (it is asked again every second).
    pub fn on_logs_ended(&mut self, why: &str) {
        self.notice = Some(Notice::Error(format!("{LOGS_STOPPED}{why}")));
    }

    /// The log stream is back.
    pub fn on_logs_resumed(&mut self) {
        if matches!(&self.notice, Some(Notice::Error(e)) if e.starts_with(LOGS_STOPPED)) {
            self.notice = None;
        }
    }

    /// The daemon answered an action.
    pub fn on_done(&mut self, action: &Action, reply: Result<Reply, String>) {
        self.running = self.running.saturating_sub(1);
        self.notice = Some(match reply {
            Ok(Reply::Done { message, .. }) => Notice::Info(message),
            Ok(Reply::Error { error, .. }) => {
                Notice::Error(format!("{}: {}", action.app(), error.message))
            }
            Ok(_) => Notice::Info(action.done()),
            Err(e) => Notice::Error(format!("{}: {e}", action.app())),
        });
    }

    /// A key: moves the selection, asks a question, answers it, or quits.
    pub fn on_key(&mut self, key: Key) -> Effect {
        if key == Key::Interrupt {
            return Effect::Quit;
        }
        if let Mode::Confirm(action) = std::mem::replace(&mut self.mode, Mode::Browse) {
            return if matches!(key, Key::Char('y' | 'Y')) {
                self.running += 1;
                self.notice = Some(Notice::Info(action.doing()));
                Effect::Run(action)
            } else {
                self.notice = Some(Notice::Info("cancelled".into()));
                Effect::Nothing
            };
        }
        let last = self.rows.len().saturating_sub(1);
        match key {
            Key::Char('q') => return Effect::Quit,
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected = (self.selected + 1).min(last),
            Key::PageUp => self.selected = self.selected.saturating_sub(PAGE),
            Key::PageDown => self.selected = (self.selected + PAGE).min(last),
            Key::Home | Key::Char('g') => self.selected = 0,
            Key::End | Key::Char('G') => self.selected = last,
            Key::Char(c @ ('r' | 'R' | '+' | '=' | '-' | 's')) => self.ask(c),
            _ => {}
        }
        Effect::Nothing
    }

    /// Starts the confirmation of the action of key `c` on the selected row's app.
    fn ask(&mut self, c: char) {
        let Some(row) = self.selected_row() else {
            self.notice = Some(Notice::Error("no app to act on".into()));
            return;
        };
        let app = row.key.app.clone();
        let from = self
            .rows
            .iter()
            .filter(|r| {
                r.key.app == app
                    && r.key
                        .instance
                        .is_some_and(|i| i != herd_proto::AppSpec::PRIMARY)
            })
            .count() as u32;
        let action = match c {
            'r' => Action::Restart { app },
            'R' => Action::Reload { app },
            '+' | '=' => Action::Scale { app, by: 1, from },
            '-' if from <= 1 => {
                self.notice = Some(Notice::Error(format!(
                    "{app} has {from} instance; an app keeps at least 1 (s stops it)"
                )));
                return;
            }
            '-' => Action::Scale { app, by: -1, from },
            _ => Action::Stop { app },
        };
        self.mode = Mode::Confirm(action);
    }
}

const LIST_FAILED: &str = "cannot list the apps: ";
const LOGS_STOPPED: &str = "log lines stopped: ";

/// The table's rows: per app its primary, then its instances; an app with neither gets one
/// row of its own.
fn rows_of(apps: &[AppInfo]) -> Vec<Row> {
    let mut rows = Vec::new();
    for app in apps {
        let port = app
            .port
            .map(|p| p.to_string())
            .or_else(|| app.listen.first().cloned())
            .unwrap_or_else(|| "-".into());
        if app.processes.is_empty() && app.primary.is_none() {
            rows.push(Row {
                key: RowKey {
                    app: app.name.clone(),
                    instance: None,
                },
                app_status: app.status,
                process: None,
                port: port.clone(),
            });
        }
        for p in app.primary.iter().chain(&app.processes) {
            rows.push(Row {
                key: RowKey {
                    app: app.name.clone(),
                    instance: Some(p.instance),
                },
                app_status: app.status,
                process: Some(p.clone()),
                port: port.clone(),
            });
        }
    }
    rows
}

fn bounded_push<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    while q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// A log line as it can be drawn: escape sequences (colours, cursor moves) removed, tabs
/// expanded, other control characters shown as `�`. Written raw, they would move the cursor
/// or change colours under the drawing library.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // A two-character escape.
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::AppSpec;

    fn proc(instance: u32, pid: u32) -> ProcessInfo {
        ProcessInfo {
            uptime_ms: Some(1000),
            cpu_percent: Some(1.5),
            memory_bytes: Some(2 << 20),
            ..crate::testing::process(instance, pid)
        }
    }

    fn app(id: u32, name: &str, n: u32) -> AppInfo {
        crate::testing::app(
            id,
            name,
            (0..n).map(|i| proc(i, 100 * (id + 1) + i)).collect(),
        )
    }

    fn monit(apps: &[AppInfo]) -> Monit {
        let mut m = Monit::new();
        m.on_apps(apps, Vec::new());
        m
    }

    fn selected(m: &Monit) -> (String, Option<u32>) {
        let k = &m.selected_row().unwrap().key;
        (k.app.clone(), k.instance)
    }

    #[test]
    fn rows_list_the_primary_first_then_instances_and_an_app_without_any() {
        let mut web = app(0, "web", 2);
        web.primary = Some(proc(AppSpec::PRIMARY, 50));
        let mut idle = app(1, "idle", 0);
        idle.status = AppStatus::Stopped;
        let m = monit(&[web, idle]);
        let keys: Vec<_> = m
            .rows()
            .iter()
            .map(|r| (r.key.app.as_str(), r.key.instance))
            .collect();
        assert_eq!(
            keys,
            [
                ("web", Some(AppSpec::PRIMARY)),
                ("web", Some(0)),
                ("web", Some(1)),
                ("idle", None)
            ]
        );
        assert_eq!(m.rows()[0].port, "8000");
    }

    #[test]
    fn selection_moves_within_the_rows() {
        let mut m = monit(&[app(0, "web", 2), app(1, "api", 1)]);
        assert_eq!(selected(&m), ("web".into(), Some(0)));
        m.on_key(Key::Up);
        assert_eq!(m.selected(), 0, "stops at the top");
        m.on_key(Key::Down);
        m.on_key(Key::Char('j'));
        assert_eq!(selected(&m), ("api".into(), Some(0)));
        m.on_key(Key::Down);
        assert_eq!(m.selected(), 2, "stops at the bottom");
        m.on_key(Key::Char('k'));
        assert_eq!(selected(&m), ("web".into(), Some(1)));
        m.on_key(Key::End);
        assert_eq!(m.selected(), 2);
        m.on_key(Key::Home);
        assert_eq!(m.selected(), 0);
        m.on_key(Key::PageDown);
        assert_eq!(m.selected(), 2);
        m.on_key(Key::PageUp);
        assert_eq!(m.selected(), 0);
    }

    #[test]
    fn selection_follows_its_instance_across_lists_and_stays_in_range() {
        let mut m = monit(&[app(0, "web", 2), app(1, "api", 2)]);
        m.on_key(Key::End);
        assert_eq!(selected(&m), ("api".into(), Some(1)));
        // web scaled to 4: api:1 moved down two lines, the selection with it.
        m.on_apps(&[app(0, "web", 4), app(1, "api", 2)], Vec::new());
        assert_eq!(selected(&m), ("api".into(), Some(1)));
        assert_eq!(m.selected(), 5);
        // api deleted: the selection stays on the last line there is.
        m.on_apps(&[app(0, "web", 4)], Vec::new());
        assert_eq!(selected(&m), ("web".into(), Some(3)));
        // Nothing left: no row, no panic on keys.
        m.on_apps(&[], Vec::new());
        assert!(m.selected_row().is_none());
        for k in [Key::Up, Key::Down, Key::End, Key::PageDown, Key::Char('r')] {
            assert_eq!(m.on_key(k), Effect::Nothing);
        }
        assert_eq!(m.notice(), Some(&Notice::Error("no app to act on".into())));
    }

    #[test]
    fn an_action_runs_only_after_yes() {
        let mut m = monit(&[app(0, "web", 2)]);
        assert_eq!(m.on_key(Key::Char('r')), Effect::Nothing);
        assert_eq!(
            m.mode(),
            &Mode::Confirm(Action::Restart { app: "web".into() })
        );
        // Anything but y is a no, and moves nothing.
        assert_eq!(m.on_key(Key::Down), Effect::Nothing);
        assert_eq!(m.mode(), &Mode::Browse);
        assert_eq!(m.selected(), 0);
        assert_eq!(m.notice(), Some(&Notice::Info("cancelled".into())));
        // q while asked cancels rather than quits.
        m.on_key(Key::Char('s'));
        assert_eq!(m.on_key(Key::Char('q')), Effect::Nothing);
        assert_eq!(m.mode(), &Mode::Browse);

        m.on_key(Key::Char('+'));
        let scale = Action::Scale {
            app: "web".into(),
            by: 1,
            from: 2,
        };
        assert_eq!(scale.question(), "Scale web from 2 to 3 instances?");
        assert_eq!(m.on_key(Key::Char('y')), Effect::Run(scale.clone()));
        assert_eq!(m.running(), 1);
        assert_eq!(
            scale.command(),
            Command::Scale {
                target: "web".into(),
                to: ScaleTo::Delta(1)
            }
        );
        m.on_done(&scale, Ok(Reply::apps(Vec::new())));
        assert_eq!(m.running(), 0);
        assert_eq!(m.notice(), Some(&Notice::Info("web scaled to 3".into())));
    }

    #[test]
    fn each_action_key_asks_its_question() {
        let mut m = monit(&[app(0, "web", 2)]);
        let mut asked = |k| {
            m.on_key(Key::Char(k));
            let Mode::Confirm(a) = m.mode().clone() else {
                panic!("{k} asked nothing")
            };
            m.on_key(Key::Esc);
            a
        };
        let web = || "web".to_string();
        assert_eq!(asked('r'), Action::Restart { app: web() });
        assert_eq!(asked('R'), Action::Reload { app: web() });
        assert_eq!(
            asked('-'),
            Action::Scale {
                app: web(),
                by: -1,
                from: 2
            }
        );
        assert_eq!(asked('s'), Action::Stop { app: web() });
        assert_eq!(
            Action::Reload { app: web() }.command(),
            Command::Reload {
                target: web(),
                env: None
            }
        );
    }

    #[test]
    fn scaling_below_one_instance_is_refused_without_asking() {
        let mut web = app(0, "web", 1);
        web.primary = Some(proc(AppSpec::PRIMARY, 50));
        let mut m = monit(&[web]);
        m.on_key(Key::Char('-'));
        assert_eq!(m.mode(), &Mode::Browse);
        assert!(matches!(m.notice(), Some(Notice::Error(e)) if e.contains("at least 1")));
    }

    #[test]
    fn q_and_ctrl_c_quit_and_ctrl_c_even_while_asking() {
        let mut m = monit(&[app(0, "web", 1)]);
        assert_eq!(m.on_key(Key::Char('q')), Effect::Quit);
        m.on_key(Key::Char('r'));
        assert_eq!(m.on_key(Key::Interrupt), Effect::Quit);
        assert_eq!(Monit::new().on_key(Key::Interrupt), Effect::Quit);
    }

    #[test]
    fn a_failed_action_shows_the_daemons_message() {
        let mut m = monit(&[app(0, "web", 1)]);
        m.on_key(Key::Char('R'));
        let Effect::Run(a) = m.on_key(Key::Char('y')) else {
            panic!()
        };
        m.on_done(
            &a,
            Ok(Reply::error(
                herd_proto::ErrorCode::ReloadFailed,
                "instance 0 never got ready",
            )),
        );
        assert_eq!(
            m.notice(),
            Some(&Notice::Error("web: instance 0 never got ready".into()))
        );
    }

    #[test]
    fn history_is_bounded_and_forgets_instances_that_are_gone() {
        let mut m = Monit::new();
        for i in 0..HISTORY as u64 + 25 {
            let mut a = app(0, "web", 2);
            a.processes[0].memory_bytes = Some(i);
            m.on_apps(&[a], Vec::new());
        }
        let key = |i| RowKey {
            app: "web".into(),
            instance: Some(i),
        };
        let h = m.history(&key(0)).unwrap();
        assert_eq!(h.memory.len(), HISTORY);
        assert_eq!(h.cpu.len(), HISTORY);
        assert_eq!(h.memory.back(), Some(&(HISTORY as u64 + 24)), "newest last");
        assert_eq!(h.memory.front(), Some(&25));
        m.on_apps(&[app(0, "web", 1)], Vec::new());
        assert!(m.history(&key(1)).is_none());
        // A slot without a process gets no sample.
        let mut a = app(0, "web", 1);
        a.processes[0].pid = None;
        m.on_apps(&[a], Vec::new());
        assert_eq!(m.history(&key(0)).unwrap().memory.len(), HISTORY);
    }

    #[test]
    fn log_lines_go_to_their_instance_bounded_and_made_printable() {
        let mut m = monit(&[app(0, "web", 2)]);
        for i in 0..LOG_LINES + 10 {
            m.on_log("web", 1, LogStream::Out, &format!("line {i}"));
        }
        m.on_log(
            "web",
            0,
            LogStream::Err,
            "\u{1b}[31mred\u{1b}[0m\tdone\u{7}",
        );
        let at = |i| RowKey {
            app: "web".into(),
            instance: Some(i),
        };
        let one = m.logs(&at(1)).unwrap();
        assert_eq!(one.len(), LOG_LINES);
        assert_eq!(one.back().unwrap().text, format!("line {}", LOG_LINES + 9));
        assert_eq!(
            m.logs(&at(0)).unwrap().back(),
            Some(&LogLine {
                stream: LogStream::Err,
                text: "red    done\u{fffd}".into()
            })
        );
        // Lines of a deleted app are dropped at the next list.
        m.on_apps(&[], Vec::new());
        assert!(m.logs(&at(1)).is_none());
    }

    #[test]
    fn the_daemons_lag_note_is_a_notice() {
        let mut m = monit(&[app(0, "web", 1)]);
        m.on_log(
            "herd",
            0,
            LogStream::Err,
            "[herd] 12 lines skipped: this follower was too slow",
        );
        assert!(matches!(m.notice(), Some(Notice::Error(e)) if e.contains("12 lines skipped")));
    }

    #[test]
    fn a_list_that_works_again_clears_its_failure() {
        let mut m = monit(&[app(0, "web", 1)]);
        m.on_list_failed("the daemon is not running");
        assert!(m.notice().is_some());
        assert!(m.rows().is_empty(), "nothing shown as running");
        m.on_apps(&[app(0, "web", 1)], Vec::new());
        assert!(m.notice().is_none());
    }

    #[test]
    fn log_lines_that_come_back_clear_their_failure_and_only_theirs() {
        let mut m = monit(&[app(0, "web", 1)]);
        m.on_logs_ended("the herd daemon is not running");
        assert!(m.notice().is_some());
        m.on_logs_resumed();
        assert!(m.notice().is_none());
        m.on_list_failed("gone");
        m.on_logs_resumed();
        assert!(m.notice().is_some());
    }

    #[test]
    fn printable_strips_escapes() {
        assert_eq!(printable("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(printable("a\u{1b}]0;t\u{1b}\\b"), "ab");
        assert_eq!(printable("a\u{1b}[2J\u{1b}[Hb\r"), "ab\u{fffd}");
        assert_eq!(printable("ünï ✓"), "ünï ✓");
        assert_eq!(printable("\u{1b}"), "");
    }
}
