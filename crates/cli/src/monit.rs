//! `herd monit`: a terminal UI over the daemon. This module owns the terminal (raw mode, the
//! alternate screen, putting both back on every way out, panics included) and the threads
//! that feed the screen: keys, a `list` once a second, the log stream, and one thread per
//! action. What the screen knows and how keys change it is `state`'s; drawing is `draw`'s.
//!
//! The daemon samples CPU and memory only when asked (`list`), so monit's polling is the only
//! sampling there is while it runs, and none is left once it quits.

mod draw;
mod state;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use herd_daemon::Home;
use herd_proto::{AppInfo, Command, LogStream, Reply};
use nix::sys::signal::{SigSet, Signal};
use ratatui::backend::CrosstermBackend;
use ratatui::widgets::TableState;
use ratatui::Terminal;

use crate::client::Client;
use state::{Action, Effect, Key, Monit};

/// How often `list` is asked (and so CPU and memory sampled) while monit is open.
const EVERY: Duration = Duration::from_secs(1);
/// Past log lines asked per log file when monit opens.
const PAST_LINES: usize = 20;
/// Events waiting to be drawn; a log flood beyond it waits in the daemon, which tells a slow
/// follower how many lines it skipped.
const QUEUE: usize = 4096;
/// Events handled at most between two frames, so that a flood of log lines still lets keys
/// and frames through.
const BATCH: usize = 512;

/// What the feeding threads tell the screen.
enum Event {
    Key(Key),
    Resize,
    Apps(Vec<AppInfo>, Vec<String>),
    ListFailed(String),
    Log {
        app: String,
        instance: u32,
        stream: LogStream,
        line: String,
    },
    LogsEnded(String),
    LogsResumed,
    Terminated,
    Done(Action, Result<Reply, String>),
}

/// `herd monit`.
pub fn run(home: &Home) -> Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        bail!("herd monit needs a terminal (stdout is not one); in scripts use `herd list` (or `herd list --json`)");
    }
    // The first list before the screen changes: a daemon that cannot be reached is reported
    // as any command reports it, and the first frame is a full one.
    let mut client = Client::connect(home)?;
    let (apps, warnings) = list(&mut client)?;
    let mut monit = Monit::new();
    monit.on_apps(&apps, warnings);

    // SIGTERM, SIGHUP and SIGINT are taken by a thread of their own (every thread started
    // from here on inherits the mask), which quits as `q` does: the terminal is put back.
    let signals = quit_signals();
    signals
        .thread_block()
        .context("blocking SIGTERM, SIGHUP and SIGINT")?;
    let screen = Screen::enter()?;
    let (tx, rx) = sync_channel(QUEUE);
    let (poke, poked) = sync_channel(1);
    spawn("monit-signals", wait_signal(signals, tx.clone()))?;
    spawn("monit-keys", keys(tx.clone()))?;
    spawn("monit-list", poll(home.clone(), client, tx.clone(), poked))?;
    spawn("monit-logs", follow_logs(home.clone(), tx.clone()))?;
    let result = event_loop(&mut monit, &rx, &tx, &poke, home);
    // The terminal is put back before an error is printed.
    drop(screen);
    result.map(|()| ExitCode::SUCCESS)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("starting the {name} thread"))?;
    Ok(())
}

fn event_loop(
    monit: &mut Monit,
    rx: &Receiver<Event>,
    tx: &SyncSender<Event>,
    poke: &SyncSender<()>,
    home: &Home,
) -> Result<()> {
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))
        .context("drawing on the terminal")?;
    let mut table = TableState::default();
    loop {
        term.draw(|f| draw::frame(f, monit, &mut table))
            .context("drawing on the terminal")?;
        // Wait for something, then take what else is there before drawing again.
        let mut ev = match rx.recv_timeout(EVERY * 2) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut handled = 0;
        while let Some(e) = ev.take() {
            match e {
                Event::Key(k) => match monit.on_key(k) {
                    Effect::Quit => return Ok(()),
                    Effect::Run(action) => act(action, home, tx.clone(), poke.clone())?,
                    Effect::Nothing => {}
                },
                // The next draw fits the new size.
                Event::Resize => {}
                Event::Apps(apps, warnings) => monit.on_apps(&apps, warnings),
                Event::ListFailed(why) => monit.on_list_failed(&why),
                Event::Log {
                    app,
                    instance,
                    stream,
                    line,
                } => monit.on_log(&app, instance, stream, &line),
                Event::LogsEnded(why) => monit.on_logs_ended(&why),
                Event::LogsResumed => monit.on_logs_resumed(),
                Event::Terminated => return Ok(()),
                Event::Done(action, reply) => monit.on_done(&action, reply),
            }
            handled += 1;
            if handled < BATCH {
                ev = rx.try_recv().ok();
            }
        }
    }
}

/// Carries out a confirmed action on a thread of its own: a reload can take a while, and the
/// screen goes on meanwhile.
fn act(action: Action, home: &Home, tx: SyncSender<Event>, poke: SyncSender<()>) -> Result<()> {
    let home = home.clone();
    spawn("monit-action", move || {
        let reply = Client::connect_existing(&home)
            .and_then(|c| c.context("the herd daemon is not running"))
            .and_then(|mut c| c.call(action.command()))
            .map_err(|e| format!("{e:#}"));
        let _ = tx.send(Event::Done(action, reply));
        // Show what it did without waiting for the next tick.
        let _ = poke.try_send(());
    })
}

fn list(client: &mut Client) -> Result<(Vec<AppInfo>, Vec<String>)> {
    match client.call(Command::List)? {
        Reply::Apps { apps, warnings, .. } => Ok((apps, warnings)),
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks `list` every [`EVERY`] (at once when poked), until the screen is gone.
fn poll(
    home: Home,
    mut client: Client,
    tx: SyncSender<Event>,
    poked: Receiver<()>,
) -> impl FnOnce() + Send + 'static {
    move || {
        let mut next = Instant::now() + EVERY;
        loop {
            match poked.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            next = Instant::now() + EVERY;
            let ev = match list(&mut client) {
                Ok((apps, warnings)) => Event::Apps(apps, warnings),
                // Never start a daemon from here: one that was stopped (`herd kill`) stays so
                // until someone starts it.
                Err(e) => match Client::connect_existing(&home) {
                    Ok(None) => Event::ListFailed(
                        "the herd daemon is not running (stopped by `herd kill`?); the next herd command starts it, e.g. herd start or herd resurrect".into(),
                    ),
                    Ok(Some(again)) => {
                        client = again;
                        Event::ListFailed(format!("{e:#}"))
                    }
                    Err(_) => Event::ListFailed(format!("{e:#}")),
                },
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
}

/// Follows every app's log lines (apps started later too), across `herd update`, and again
/// when a daemon comes back after going away.
fn follow_logs(home: Home, tx: SyncSender<Event>) -> impl FnOnce() + Send + 'static {
    move || {
        let ask = |lines| Command::Logs {
            target: "all".into(),
            lines,
            follow: true,
            stream: None,
        };
        let mut lines = PAST_LINES;
        let mut stopped = false;
        loop {
            let failed = match Client::connect_existing(&home) {
                Ok(Some(mut client)) => match client.send(ask(lines)) {
                    Ok(()) => {
                        if std::mem::take(&mut stopped) && tx.send(Event::LogsResumed).is_err() {
                            return;
                        }
                        match forward_logs(&mut client, &tx) {
                            // The stream ended: the daemon was replaced (`herd update`) or
                            // went away; look again.
                            Ok(None) => None,
                            Ok(Some(why)) => Some(why),
                            Err(()) => return,
                        }
                    }
                    Err(e) => Some(format!("{e:#}")),
                },
                Ok(None) => Some("the herd daemon is not running".into()),
                Err(e) => Some(format!("{e:#}")),
            };
            // After a stream that ended (`herd update`) the past lines were shown; after a
            // daemon that went away, the next one's apps are new.
            lines = if failed.is_some() { PAST_LINES } else { 0 };
            match failed {
                None => std::thread::sleep(Duration::from_millis(100)),
                Some(why) => {
                    if !std::mem::replace(&mut stopped, true)
                        && tx.send(Event::LogsEnded(why)).is_err()
                    {
                        return;
                    }
                    std::thread::sleep(EVERY);
                }
            }
        }
    }
}

/// Passes log lines on until the stream ends (`Ok(None)`), fails (`Ok(Some(why))`), or the
/// screen is gone (`Err`).
fn forward_logs(client: &mut Client, tx: &SyncSender<Event>) -> Result<Option<String>, ()> {
    loop {
        let ev = match client.recv() {
            Ok(None) | Ok(Some(Reply::End { .. })) => return Ok(None),
            Ok(Some(Reply::Log {
                app,
                instance,
                stream,
                line,
                ..
            })) => Event::Log {
                app,
                instance,
                stream,
                line,
            },
            Ok(Some(Reply::Error { error, .. })) => return Ok(Some(error.message)),
            Ok(Some(other)) => return Ok(Some(format!("unexpected reply {other:?}"))),
            Err(e) => return Ok(Some(format!("{e:#}"))),
        };
        tx.send(ev).map_err(|_| ())?;
    }
}

fn quit_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        set.add(s);
    }
    set
}

/// Waits for one of `set` (blocked in every thread) and asks the screen to quit.
fn wait_signal(set: SigSet, tx: SyncSender<Event>) -> impl FnOnce() + Send + 'static {
    move || {
        if set.wait().is_ok() {
            let _ = tx.send(Event::Terminated);
        }
    }
}

/// Reads the terminal's keys and resizes.
fn keys(tx: SyncSender<Event>) -> impl FnOnce() + Send + 'static {
    move || loop {
        let ev = match event::read() {
            Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                match key_of(k.code, k.modifiers) {
                    Some(k) => Event::Key(k),
                    None => continue,
                }
            }
            Ok(TermEvent::Resize(..)) => Event::Resize,
            Ok(_) => continue,
            // No more input (the terminal is gone): quit as Ctrl-C would, and stop reading.
            Err(_) => {
                let _ = tx.send(Event::Key(Key::Interrupt));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// The key monit understands for a terminal key, if any.
fn key_of(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    if mods.contains(KeyModifiers::CONTROL) {
        return matches!(code, KeyCode::Char('c' | 'C')).then_some(Key::Interrupt);
    }
    Some(match code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

/// The terminal in monit's mode: raw, on the alternate screen, cursor hidden. Dropping it (or
/// a panic, through the hook [`Screen::enter`] installs) puts the terminal back as it was.
struct Screen;

impl Screen {
    fn enter() -> Result<Self> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        terminal::enable_raw_mode().context(
            "cannot put the terminal in raw mode; run herd monit in a terminal, or use `herd list`",
        )?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .context("setting up the terminal")?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Raw mode off, the alternate screen left, the cursor shown. Errors are ignored: there is
/// nothing better to do with them on the way out.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let mut out = std::io::stdout();
    let _ = execute!(out, terminal::LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_keys_map_to_monit_keys() {
        let none = KeyModifiers::NONE;
        assert_eq!(key_of(KeyCode::Up, none), Some(Key::Up));
        assert_eq!(key_of(KeyCode::Char('j'), none), Some(Key::Char('j')));
        assert_eq!(
            key_of(KeyCode::Char('R'), KeyModifiers::SHIFT),
            Some(Key::Char('R'))
        );
        assert_eq!(
            key_of(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Interrupt)
        );
        // Other control keys do nothing, rather than act as their letter.
        assert_eq!(key_of(KeyCode::Char('r'), KeyModifiers::CONTROL), None);
        assert_eq!(key_of(KeyCode::F(1), none), None);
    }
}
