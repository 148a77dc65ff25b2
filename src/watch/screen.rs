//! The full-screen view of `client watch`: servers, the recovery in progress step by step,
//! and the last events; drawn about 10 times a second, until `q`, Esc or ctrl+c. Keys are
//! read by a thread of their own (crossterm's reads block), and the coordinator's stream by
//! the async loop, so neither waits on the other. A lost coordinator is tried again every
//! half second, and said so on the screen.

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::model::{Model, clock, human_bytes, line};
use super::{next, subscribe};
use crate::connection::Connection;
use crate::protocol::{ClusterSnapshot, EventKind, RecoveryProgress, ServerState};

/// Time between two frames.
const FRAME: Duration = Duration::from_millis(100);
/// Time between two attempts to reach a lost coordinator.
const RETRY: Duration = Duration::from_millis(500);
/// Steps done shown in the recovery panel (the last ones; rollbacks add steps).
const SHOWN_STEPS: usize = 6;

pub async fn run(coordinator: &str) -> Result<(), String> {
    let (keys_tx, keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || read_keys(keys_tx));
    let mut terminal = ratatui::try_init().map_err(|e| format!("terminal: {e}"))?;
    let result = watch(&mut terminal, coordinator, keys).await;
    ratatui::restore();
    result
}

/// Sends `()` when the user asks to quit; ends when nobody listens any more.
fn read_keys(quit: mpsc::UnboundedSender<()>) {
    while !quit.is_closed() {
        if !event::poll(FRAME).unwrap_or(false) {
            continue;
        }
        let Ok(Event::Key(key)) = event::read() else { continue };
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        let quits = matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) || ctrl_c;
        if key.kind == KeyEventKind::Press && quits && quit.send(()).is_err() {
            return;
        }
    }
}

async fn watch(
    terminal: &mut DefaultTerminal,
    coordinator: &str,
    mut quit: mpsc::UnboundedReceiver<()>,
) -> Result<(), String> {
    let mut model = Model::default();
    let mut conn: Option<Connection> = None;
    let mut link = String::from("connecting");
    let mut retry_at = Instant::now();
    let mut frames = tokio::time::interval(FRAME);
    loop {
        if conn.is_none() && Instant::now() >= retry_at {
            match tokio::time::timeout(RETRY, subscribe(coordinator)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    model.events.clear();
                    link = "connected".into();
                }
                _ => {
                    retry_at = Instant::now() + RETRY;
                    link = "cannot reach the coordinator; trying again".into();
                }
            }
        }
        let message = async {
            match conn.as_mut() {
                Some(c) => next(c).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = quit.recv() => return Ok(()),
            message = message => match message {
                Ok(Some(message)) => model.apply(message),
                _ => {
                    conn = None;
                    retry_at = Instant::now() + RETRY;
                    link = "lost the coordinator; trying again".into();
                }
            },
            _ = frames.tick() => {
                terminal
                    .draw(|frame| render(frame, &model, coordinator, &link))
                    .map_err(|e| format!("terminal: {e}"))?;
            }
        }
    }
}

fn render(frame: &mut Frame, model: &Model, coordinator: &str, link: &str) {
    let servers = model.snapshot.as_ref().map_or(0, |s| s.status.servers.len()) as u16;
    let progress = model.snapshot.as_ref().and_then(|s| s.recovery.as_ref());
    // A line per step shown (at most 6 done and the current one), and the summary line.
    let steps = progress.map_or(1, |p| p.done.len().min(SHOWN_STEPS) as u16 + 1);
    let [head, table, recovery, events] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(servers + 3),
        Constraint::Length(steps + 3),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    let epoch = model.snapshot.as_ref().map_or(0, |s| s.status.epoch);
    let title = format!("ftkv watch  coordinator {coordinator} ({link})  epoch {epoch}  q: quit");
    frame.render_widget(
        Paragraph::new(title).style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );
    if let Some(snapshot) = &model.snapshot {
        frame.render_widget(servers_table(snapshot), table);
        frame.render_widget(recovery_panel(progress, model), recovery);
    }
    render_events(frame, model, events);
}

fn state_style(state: ServerState) -> Style {
    let colour = match state {
        ServerState::Running => Color::Green,
        ServerState::Recovering => Color::Yellow,
        ServerState::Failed => Color::Red,
        ServerState::Starting => Color::Cyan,
    };
    Style::new().fg(colour).add_modifier(Modifier::BOLD)
}

fn servers_table(snapshot: &ClusterSnapshot) -> Table<'static> {
    let header =
        ["id", "host", "pid", "state", "primary", "secondary", "ops/s", "repl queue", "data"];
    let rows = snapshot.status.servers.iter().zip(&snapshot.stats).map(|(server, stats)| {
        let state = Span::styled(server.state.as_str(), state_style(server.state));
        let mut cells = vec![
            server.id.to_string().into(),
            server.host.clone().into(),
            server.pid.to_string().into(),
            Line::from(state),
        ];
        cells.extend(
            match stats {
                Some((s, rate)) => [
                    s.primary_keys.to_string(),
                    s.secondary_keys.to_string(),
                    format!("{rate:.0}"),
                    format!("{} ({})", s.repl_queue, human_bytes(s.repl_queue_bytes)),
                    human_bytes(s.primary_bytes + s.secondary_bytes),
                ],
                None => ["-", "-", "-", "-", "-"].map(String::from),
            }
            .map(Line::from),
        );
        Row::new(cells)
    });
    let widths = [2, 0, 7, 10, 8, 9, 7, 12, 10].map(|w| match w {
        0 => Constraint::Fill(1),
        w => Constraint::Length(w),
    });
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(" servers "))
}

fn recovery_panel(progress: Option<&RecoveryProgress>, model: &Model) -> Paragraph<'static> {
    let Some(p) = progress else {
        let last = model.events.iter().rev().find(|e| {
            matches!(e.kind, EventKind::RecoveryComplete { .. } | EventKind::Fatal { .. })
        });
        let text = last.map_or("no recovery yet".into(), |e| format!("last: {}", line(e)));
        return Paragraph::new(vec![Line::from("no recovery in progress"), Line::from(text)])
            .block(Block::bordered().title(" recovery "));
    };
    let mut lines = vec![Line::from(format!(
        "server {}, attempt {}, {} ms so far",
        p.server, p.attempts, p.total_ms
    ))];
    let skip = p.done.len().saturating_sub(SHOWN_STEPS);
    for step in &p.done[skip..] {
        lines.push(Line::from(format!("  done  {:<26} {:>6} ms", step.step, step.ms)));
    }
    let current = format!("  now   {:<26} {:>6} ms", p.current.step, p.current.ms);
    lines.push(Line::styled(current, Style::new().fg(Color::Yellow)));
    Paragraph::new(lines).block(Block::bordered().title(" recovery in progress "))
}

fn render_events(frame: &mut Frame, model: &Model, area: Rect) {
    let room = area.height.saturating_sub(2) as usize;
    let skip = model.events.len().saturating_sub(room);
    let lines: Vec<Line> = model
        .events
        .iter()
        .skip(skip)
        .map(|e| {
            let colour = match e.kind {
                EventKind::ServerLost { .. } | EventKind::Fatal { .. } => Color::Red,
                EventKind::RolledBack { .. } => Color::Magenta,
                EventKind::RecoveryComplete { .. } => Color::Green,
                _ => Color::Reset,
            };
            Line::from(vec![
                Span::styled(clock(e.unix_ms), Style::new().fg(Color::DarkGray)),
                Span::raw(" "),
                Span::styled(super::describe(&e.kind), Style::new().fg(colour)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" events (UTC) ")),
        area,
    );
}
