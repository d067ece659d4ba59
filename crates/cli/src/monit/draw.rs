//! Drawing one frame of `herd monit` from its [`Monit`] state: the table of instances, the
//! selected instance's CPU and memory history, its log lines, the last notice and the help
//! line (or the question being asked). Nothing here changes the state or talks to anyone.

use herd_proto::{AppStatus, LogStream, ProcessStatus};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Sparkline, Table, TableState};
use ratatui::Frame;

use super::state::{Mode, Monit, Notice, Row, Samples};
use crate::output::{human_bytes, human_ms, instance_name};

/// The help line's text while browsing (documented in docs/monit.md).
pub const HELP: &str = " ↑↓/jk select · r restart · R reload · +/- scale · s stop · q quit";

/// Samples shown in the table's memory history column.
const TREND: usize = 12;
/// Below this width the table leaves out its history column.
const WIDE: u16 = 100;

/// Heights of the table, the history panel and the log pane in `avail` lines, for `rows`
/// rows: the table as tall as it needs up to two thirds of what the history panel leaves,
/// the history panel only when there is room, the logs the rest.
pub fn heights(avail: u16, rows: usize) -> (u16, u16, u16) {
    let details = if avail >= 18 { 5 } else { 0 };
    let rest = avail - details;
    let needed = u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(3);
    let table = needed.min(rest - rest / 3);
    (table, details, rest - table)
}

/// Draws the whole screen. `table` keeps the table's scroll position between frames.
pub fn frame(f: &mut Frame, m: &Monit, table: &mut TableState) {
    let area = f.area();
    let [body, notice, help] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    // With no row, one line says how to start an app.
    let (t, d, _) = heights(body.height, m.rows().len().max(1));
    let [table_area, details_area, logs_area] = Layout::vertical([
        Constraint::Length(t),
        Constraint::Length(d),
        Constraint::Fill(1),
    ])
    .areas(body);
    draw_table(f, m, table, table_area);
    if d > 0 {
        draw_details(f, m, details_area);
    }
    draw_logs(f, m, logs_area);
    f.render_widget(notice_line(m), notice);
    f.render_widget(help_line(m), help);
}

fn draw_table(f: &mut Frame, m: &Monit, state: &mut TableState, area: Rect) {
    let instances = m.rows().iter().filter(|r| r.key.instance.is_some()).count();
    let mut title = format!(
        " herd monit · {} app{} · {} process{} · sampled every 1 s while open ",
        m.app_count(),
        if m.app_count() == 1 { "" } else { "s" },
        instances,
        if instances == 1 { "" } else { "es" },
    );
    if m.running() > 0 {
        title.push_str(&format!("· {} action(s) under way ", m.running()));
    }
    let wide = area.width >= WIDE;
    let name_w = m
        .rows()
        .iter()
        .map(|r| r.key.app.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 24) as u16;
    let mut header = vec![
        "app", "inst", "pid", "status", "cpu", "memory", "restarts", "uptime", "port",
    ];
    let mut widths = vec![
        Constraint::Length(name_w),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Min(5),
    ];
    if wide {
        header.insert(6, "mem history");
        widths.insert(6, Constraint::Length(TREND as u16));
    }
    let rows = m.rows().iter().map(|r| table_row(m, r, wide));
    let table = Table::new(rows, widths)
        .header(TableRow::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    if m.rows().is_empty() {
        state.select(None);
        f.render_stateful_widget(table, area, state);
        let inner = Block::bordered().inner(area);
        if inner.height > 1 {
            let note = Paragraph::new(
                "no apps; start one with `herd start <program> -i 2 --port 8000`".dim(),
            );
            f.render_widget(note, Rect::new(inner.x, inner.y + 1, inner.width, 1));
        }
    } else {
        state.select(Some(m.selected()));
        f.render_stateful_widget(table, area, state);
    }
}

fn table_row<'a>(m: &Monit, r: &'a Row, wide: bool) -> TableRow<'a> {
    let dash = || Cell::from("-");
    let mut cells: Vec<Cell> = vec![Cell::from(r.key.app.as_str())];
    match &r.process {
        Some(p) => {
            cells.push(Cell::from(instance_name(p.instance)));
            cells.push(Cell::from(p.pid.map_or("-".into(), |p| p.to_string())));
            // An online instance its probes find sick shows that instead (docs/health.md).
            let sick = p.health.as_ref().and_then(|h| {
                if h.live == Some(false) {
                    Some(("unlive", Color::Red))
                } else if h.ready == Some(false) {
                    Some(("unready", Color::Yellow))
                } else {
                    None
                }
            });
            match sick {
                Some((word, color)) if p.status == ProcessStatus::Online => {
                    cells.push(Cell::from(word).style(Style::new().fg(color)));
                }
                _ => cells.push(Cell::from(p.status.as_str()).style(status_style(p.status))),
            }
            cells.push(Cell::from(
                p.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
            ));
            cells.push(Cell::from(p.memory_bytes.map_or("-".into(), human_bytes)));
            if wide {
                let trend = m
                    .history(&r.key)
                    .map(|h| trend(h, TREND))
                    .unwrap_or_default();
                cells.push(Cell::from(trend).style(Style::new().fg(Color::Cyan)));
            }
            cells.push(Cell::from(p.restarts.to_string()));
            cells.push(Cell::from(p.uptime_ms.map_or("-".into(), human_ms)));
        }
        None => {
            cells.push(dash());
            cells.push(dash());
            cells.push(Cell::from(match r.app_status {
                AppStatus::Running => "running",
                AppStatus::Stopped => "stopped",
            }));
            cells.extend([dash(), dash()]);
            if wide {
                cells.push(Cell::from(""));
            }
            cells.extend([dash(), dash()]);
        }
    }
    cells.push(Cell::from(r.port.as_str()));
    TableRow::new(cells)
}

fn status_style(s: ProcessStatus) -> Style {
    match s {
        ProcessStatus::Online => Style::new().fg(Color::Green),
        ProcessStatus::Starting | ProcessStatus::Stopping | ProcessStatus::WaitingRestart => {
            Style::new().fg(Color::Yellow)
        }
        ProcessStatus::Exited | ProcessStatus::Errored => Style::new().fg(Color::Red),
        ProcessStatus::Stopped => Style::new().fg(Color::DarkGray),
    }
}

/// The last `n` memory samples as bars, scaled from their lowest to their highest; flat when
/// they move by less than 1% (a few pages up and down would look like a trend).
pub fn trend(h: &Samples, n: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let last: Vec<u64> = h
        .memory
        .iter()
        .skip(h.memory.len().saturating_sub(n))
        .copied()
        .collect();
    let lo = last.iter().copied().min().unwrap_or(0);
    let hi = last.iter().copied().max().unwrap_or(0);
    let range = hi - lo;
    last.iter()
        .map(|&v| {
            if range == 0 || range < hi / 100 {
                '▁'
            } else {
                let level = ((v - lo) * 7 / range) as usize;
                BARS.get(level).copied().unwrap_or('█')
            }
        })
        .collect()
}

fn draw_details(f: &mut Frame, m: &Monit, area: Rect) {
    let [cpu_area, mem_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let samples = m.selected_row().and_then(|r| m.history(&r.key));
    let empty = Samples::default();
    let h = samples.unwrap_or(&empty);
    let cpu_title = match (h.cpu.back(), h.cpu.iter().copied().reduce(f64::max)) {
        (Some(now), Some(max)) => format!(" cpu {now:.1}% · max {max:.1}% "),
        _ => " cpu ".into(),
    };
    let mem_title = match (
        h.memory.back(),
        h.memory.iter().min(),
        h.memory.iter().max(),
    ) {
        (Some(&now), Some(&lo), Some(&hi)) => format!(
            " memory {} · {}..{} ",
            human_bytes(now),
            human_bytes(lo),
            human_bytes(hi)
        ),
        _ => " memory ".into(),
    };
    // The newest samples that fit, newest on the right.
    let fit = |len: usize, width: u16| len.saturating_sub(usize::from(width.saturating_sub(2)));
    let cpu: Vec<u64> = h
        .cpu
        .iter()
        .skip(fit(h.cpu.len(), cpu_area.width))
        .map(|c| (c * 10.0).round() as u64)
        .collect();
    // Memory from its lowest to its highest, on a floor of an eighth so that a flat line
    // shows; moves under 1% stay flat (as in the table's history column).
    let lo = h.memory.iter().min().copied().unwrap_or(0);
    let hi = h.memory.iter().max().copied().unwrap_or(0);
    let span = (hi - lo).max(hi / 100).max(8);
    let mem: Vec<u64> = h
        .memory
        .iter()
        .skip(fit(h.memory.len(), mem_area.width))
        .map(|v| v - lo + span / 8)
        .collect();
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(cpu_title))
            .data(&cpu)
            .max(cpu.iter().copied().max().unwrap_or(0).max(10))
            .style(Style::new().fg(Color::Green)),
        cpu_area,
    );
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(mem_title))
            .data(&mem)
            .max(span + span / 8)
            .style(Style::new().fg(Color::Cyan)),
        mem_area,
    );
}

fn draw_logs(f: &mut Frame, m: &Monit, area: Rect) {
    let row = m.selected_row();
    // An instance with `@pm2/io` metrics: they get a box beside its logs, as in `pm2 monit`
    // (on a narrow screen, the logs' bottom line).
    let metrics = row
        .and_then(|r| r.process.as_ref())
        .map(pm2_metric_lines)
        .unwrap_or_default();
    let area = if !metrics.is_empty() && area.width >= 80 {
        let [logs, side] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(44)]).areas(area);
        let lines: Vec<Line> = metrics
            .iter()
            .map(|(name, value)| {
                Line::from(vec![name.clone().dim(), " ".into(), value.clone().cyan()])
            })
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" @pm2/io metrics ")),
            side,
        );
        logs
    } else {
        area
    };
    let title = match row.map(|r| (&r.key.app, r.key.instance)) {
        Some((app, Some(i))) => format!(" logs {app}:{} ", instance_name(i)),
        Some((app, None)) => format!(" logs {app} "),
        None => " logs ".into(),
    };
    let mut block = Block::bordered().title(title);
    if !metrics.is_empty() && area.width < 80 {
        let all: Vec<String> = metrics.iter().map(|(n, v)| format!("{n} {v}")).collect();
        block = block.title_bottom(Line::from(format!(" @pm2/io: {} ", all.join(" · "))).cyan());
    }
    let inner = block.inner(area);
    let shown = usize::from(inner.height);
    let lines: Vec<Line> = match row.and_then(|r| m.logs(&r.key)) {
        Some(logs) if !logs.is_empty() => logs
            .iter()
            .skip(logs.len().saturating_sub(shown))
            .map(|l| match l.stream {
                LogStream::Out => Line::raw(l.text.as_str()),
                LogStream::Err => Line::styled(l.text.as_str(), Style::new().fg(Color::Red)),
            })
            .collect(),
        _ => vec![Line::from("no output yet".dim())],
    };
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// The instance's `@pm2/io` metrics (`io.metric`, `io.counter`, …) as it last sent them:
/// (name, value with its unit), the app's own first and @pm2/io's default ones (event loop,
/// heap, handles) after.
pub fn pm2_metric_lines(p: &herd_proto::ProcessInfo) -> Vec<(String, String)> {
    let mut out: Vec<(bool, String, String)> = p
        .pm2_metrics
        .iter()
        .map(|(name, m)| {
            let value = match m.get("value") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => match n.as_f64() {
                    Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
                    _ => n.to_string(),
                },
                Some(serde_json::Value::Null) | None => "–".into(),
                Some(other) => other.to_string(),
            };
            let value = match m
                .get("unit")
                .and_then(|u| u.as_str())
                .filter(|u| !u.is_empty())
            {
                Some(unit) => format!("{value} {unit}"),
                None => value,
            };
            (
                PM2_DEFAULT_METRICS.contains(&name.as_str()),
                name.clone(),
                value,
            )
        })
        .collect();
    out.sort_by_key(|(default, _, _)| *default);
    out.into_iter().map(|(_, n, v)| (n, v)).collect()
}

/// The metrics `@pm2/io` adds by itself (its `metrics` defaults, v6).
const PM2_DEFAULT_METRICS: &[&str] = &[
    "Active handles",
    "Active requests",
    "Event Loop Latency",
    "Event Loop Latency p95",
    "Heap Size",
    "Heap Usage",
    "Used Heap Size",
    "HTTP",
    "HTTP Mean Latency",
    "HTTP P95 Latency",
    "GC Heap Size",
    "GC Heap Usage",
];

fn notice_line(m: &Monit) -> Paragraph<'_> {
    let line = match m.notice() {
        Some(Notice::Info(s)) => Line::from(format!(" {s}")),
        Some(Notice::Error(s)) => Line::from(Span::styled(
            format!(" {s}"),
            Style::new().fg(Color::Red).bold(),
        )),
        None => match m.warnings().first() {
            Some(w) => Line::from(Span::styled(
                format!(" warning: {w}"),
                Style::new().fg(Color::Yellow),
            )),
            None => Line::default(),
        },
    };
    Paragraph::new(line)
}

fn help_line(m: &Monit) -> Paragraph<'_> {
    match m.mode() {
        Mode::Browse => Paragraph::new(HELP).style(Style::new().fg(Color::Black).bg(Color::Gray)),
        Mode::Confirm(a) => Paragraph::new(format!(" {} y: yes · any other key: no", a.question()))
            .style(Style::new().fg(Color::Black).bg(Color::Yellow).bold()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::Key;
    use super::*;
    use herd_proto::AppInfo;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn app(name: &str, n: u32) -> AppInfo {
        crate::testing::app(
            0,
            name,
            (0..n)
                .map(|i| crate::testing::process(i, 4000 + i))
                .collect(),
        )
    }

    fn render(m: &Monit, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut state = TableState::default();
        t.draw(|f| frame(f, m, &mut state)).unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    #[test]
    fn a_frame_shows_every_instance_its_logs_and_the_help_line() {
        let mut m = Monit::new();
        m.on_apps(&[app("web", 2)], Vec::new());
        m.on_log("web", 0, LogStream::Out, "hello from 0");
        m.on_log("web", 1, LogStream::Out, "hello from 1");
        let screen = render(&m, 120, 40);
        let text = screen.join("\n");
        assert!(text.contains("4000") && text.contains("4001"), "{text}");
        assert!(text.contains("online") && text.contains("3.0mb") && text.contains("1m"));
        assert!(text.contains("logs web:0") && text.contains("hello from 0"));
        assert!(
            !text.contains("hello from 1"),
            "only the selected one's lines"
        );
        assert!(screen[39].contains("q quit"), "{}", screen[39]);
        assert!(text.contains("mem history"));
    }

    #[test]
    fn an_instance_its_readiness_probe_fails_shows_unready() {
        let mut a = app("web", 2);
        a.processes[1].health = Some(herd_proto::Health {
            ready: Some(false),
            live: None,
            last: None,
        });
        let mut m = Monit::new();
        m.on_apps(&[a], Vec::new());
        let text = render(&m, 120, 40).join("\n");
        assert!(text.contains("unready"), "{text}");
        assert_eq!(text.matches("online").count(), 1, "{text}");
    }

    #[test]
    fn an_instances_pm2_io_metrics_show_under_its_logs() {
        let mut a = app("web", 2);
        a.processes[0].pm2_metrics = serde_json::json!({
            "Realtime users": {"value": 12, "type": "metric"},
            "req/min": {"value": 3.25, "unit": "req/min", "type": "meter"},
        })
        .as_object()
        .unwrap()
        .clone();
        let mut m = Monit::new();
        m.on_apps(&[a], Vec::new());
        let text = render(&m, 120, 40).join("\n");
        assert!(text.contains("@pm2/io metrics"), "{text}");
        assert!(text.contains("Realtime users 12"), "{text}");
        assert!(text.contains("req/min 3.25 req/min"), "{text}");
        let narrow = render(&m, 70, 30).join("\n");
        assert!(narrow.contains("@pm2/io: Realtime users 12"), "{narrow}");
    }

    #[test]
    fn a_question_replaces_the_help_line() {
        let mut m = Monit::new();
        m.on_apps(&[app("web", 2)], Vec::new());
        m.on_key(Key::Char('+'));
        let screen = render(&m, 100, 30);
        assert!(
            screen[29].contains("Scale web from 2 to 3 instances? y: yes"),
            "{}",
            screen[29]
        );
    }

    #[test]
    fn tiny_and_empty_screens_draw_without_panicking() {
        let mut m = Monit::new();
        for (w, h) in [(1, 1), (10, 3), (40, 8), (80, 24)] {
            render(&m, w, h);
        }
        let text = render(&m, 80, 24).join("\n");
        assert!(text.contains("no apps"), "{text}");
        m.on_apps(&[app("web", 40)], Vec::new());
        m.on_key(Key::End);
        for (w, h) in [(1, 1), (10, 3), (40, 8), (80, 24)] {
            render(&m, w, h);
        }
        // The selected last row is scrolled into view.
        let text = render(&m, 80, 24).join("\n");
        assert!(text.contains("4039"), "{text}");
    }

    #[test]
    fn heights_share_the_screen() {
        assert_eq!(heights(38, 3), (6, 5, 27));
        // Many rows: the logs keep a third.
        assert_eq!(heights(38, 100), (22, 5, 11));
        // Short screen: no history panel.
        assert_eq!(heights(8, 3), (6, 0, 2));
        assert_eq!(heights(0, 3), (0, 0, 0));
    }

    #[test]
    fn trend_scales_between_low_and_high_and_stays_flat_on_noise() {
        let mut h = Samples::default();
        h.memory.extend([100, 200, 300, 800]);
        assert_eq!(trend(&h, 12), "▁▂▃█");
        assert_eq!(trend(&h, 2), "▁█");
        let mut flat = Samples::default();
        flat.memory.extend([1_000_000, 1_000_100, 1_000_000]);
        assert_eq!(trend(&flat, 12), "▁▁▁");
        assert_eq!(trend(&Samples::default(), 12), "");
    }
}
