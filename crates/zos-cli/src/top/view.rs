//! Drawing `zos farm top`: the farm screen (nodes, contracts, refusals, rollbacks, the
//! grid) and a node's screen (its heartbeat and its contracts).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;
use zos_contract::PublicKey;

use super::model::{age_text, refusals, short, visible, ContractRow, FarmView, NodeView};
use super::{App, Screen};
use zos_status::render::bytes as human_bytes;

/// The widest bar, in cells (a narrower terminal gets narrower bars, then percentages).
const BAR: usize = 10;

/// The bar width that fits the node table's four gauges in `width` cells.
fn bar_width(width: u16) -> usize {
    // Borders, the selection mark, the node, version, heartbeat and contracts columns
    // and the spaces between columns.
    let fixed = 2 + 2 + 16 + 10 + 10 + 20 + 7;
    let per_gauge = (width as usize).saturating_sub(fixed) / 4;
    // "[" + bar + "] " + "100%": 7 cells besides the bar.
    per_gauge.saturating_sub(7).min(BAR)
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// Draws the whole screen for `app` at unix time `now`.
pub fn draw(frame: &mut Frame, app: &App, now: u64) {
    let view = app.records.farm_view(&app.farm_id);
    let [head, body] =
        Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(frame.area());
    frame.render_widget(Paragraph::new(header(app, &view)), head);
    match &app.screen {
        Screen::Farm => farm(frame, body, app, &view, now),
        Screen::Node(node) => match view.nodes.iter().find(|n| n.node == *node) {
            Some(n) => node_screen(frame, body, n, now),
            None => frame.render_widget(
                Paragraph::new(format!(
                    "node {node} is no longer registered in farm {} (Esc: back)",
                    app.farm_id
                )),
                body,
            ),
        },
    }
}

fn header(app: &App, view: &FarmView) -> Vec<Line<'static>> {
    let farm = match &view.farm {
        Some(f) => format!("farm {} \"{}\"", f.id, f.name),
        None => format!("farm {} (no valid farm record in the notary)", app.farm_id),
    };
    let skipped = if view.skipped > 0 {
        format!(" · {} invalid record(s) not shown", view.skipped)
    } else {
        String::new()
    };
    let first = format!(
        "zos farm top · {farm} · {} · {} node(s){skipped} · {}",
        app.feed,
        view.nodes.len(),
        app.url
    );
    let filter = if app.editing {
        format!("filter: {}_ (Enter: apply, Esc: clear)", app.filter)
    } else if app.filter.is_empty() {
        "/ filter".to_string()
    } else {
        format!("filter: {} (/ edit, Esc clear)", app.filter)
    };
    let keys = match app.screen {
        Screen::Farm => format!(
            "sort: {} (s) · {filter} · ↑↓ select · Enter open · q quit",
            app.sort.name()
        ),
        Screen::Node(_) => "Esc back · q quit".to_string(),
    };
    vec![Line::styled(first, bold()), Line::raw(keys)]
}

fn heartbeat_age(n: &NodeView, now: u64) -> String {
    match &n.heartbeat {
        Some(hb) => format!("{} ago", age_text(hb.age(now))),
        None => "never".into(),
    }
}

fn farm(frame: &mut Frame, area: Rect, app: &App, view: &FarmView, now: u64) {
    let nodes = visible(view, &app.filter, app.sort, now);
    let contracts: Vec<(&PublicKey, &ContractRow)> = nodes
        .iter()
        .flat_map(|n| n.contracts.iter().map(move |c| (&n.node, c)))
        .collect();
    let refused = refusals(nodes.iter().copied());
    let grid_height = grid_lines(view).len().clamp(1, 8) as u16 + 2;
    let [nodes_area, contracts_area, refusals_area, bottom] = Layout::vertical([
        Constraint::Length(nodes.len().max(1) as u16 + 3),
        Constraint::Min(contracts.len().clamp(1, 6) as u16 + 3),
        Constraint::Length(refused.len().clamp(1, 6) as u16 + 3),
        Constraint::Length(grid_height),
    ])
    .areas(area);

    let bar = bar_width(nodes_area.width);
    let gauge_width = if bar == 0 { 4 } else { bar as u16 + 7 };
    let rows: Vec<Row> = nodes
        .iter()
        .map(|n| {
            let [cpu, mem, ssd, hdd] = n.gauges();
            let counts = n
                .heartbeat
                .as_ref()
                .map(|h| {
                    format!(
                        "{} ok {} prov {} failed",
                        h.contracts.running, h.contracts.provisioning, h.contracts.failed
                    )
                })
                .unwrap_or_else(|| "-".into());
            Row::new(vec![
                short(&n.node),
                n.registration.version.clone(),
                heartbeat_age(n, now),
                cpu.bar(bar),
                mem.bar(bar),
                ssd.bar(bar),
                hdd.bar(bar),
                counts,
            ])
        })
        .collect();
    let title = if nodes.len() == view.nodes.len() {
        format!(" Nodes ({}) ", nodes.len())
    } else {
        format!(" Nodes ({} of {}) ", nodes.len(), view.nodes.len())
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(gauge_width),
            Constraint::Length(gauge_width),
            Constraint::Length(gauge_width),
            Constraint::Length(gauge_width),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec![
            "NODE",
            "VERSION",
            "HEARTBEAT",
            if bar == 0 { "CPU" } else { "CPU (resv)" },
            "MEMORY",
            "SSD",
            "HDD",
            "CONTRACTS",
        ])
        .style(bold()),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .highlight_symbol("> ")
    .block(Block::bordered().title(title));
    let mut state = TableState::default();
    if !nodes.is_empty() {
        state.select(Some(app.selected.min(nodes.len() - 1)));
    }
    frame.render_stateful_widget(table, nodes_area, &mut state);

    frame.render_widget(
        contracts_table(contracts.iter().map(|(n, c)| (Some(*n), *c)), " Contracts "),
        contracts_area,
    );

    let rows: Vec<Row> = refused
        .iter()
        .map(|r| {
            Row::new(vec![
                short(&r.node),
                r.contract.clone(),
                r.what.clone(),
                format!("{} ago", age_text(now.saturating_sub(r.signed_at))),
                r.why.clone(),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(20),
            Constraint::Length(20),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(vec!["NODE", "CONTRACT", "WHAT", "REPORTED", "WHY"]).style(bold()))
    .block(Block::bordered().title(if empty {
        " Recent refusals: none "
    } else {
        " Recent refusals "
    }));
    frame.render_widget(table, refusals_area);

    let [rollbacks, grid] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    frame.render_widget(
        Paragraph::new("none: nodes do not roll contracts back yet")
            .block(Block::bordered().title(" Rollbacks ")),
        rollbacks,
    );
    frame.render_widget(
        Paragraph::new(grid_lines(view))
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Grid placements and moves ")),
        grid,
    );
}

/// Per placement contract: where each replica runs, at which epoch, in which state;
/// then its newest move.
fn grid_lines(view: &FarmView) -> Vec<Line<'static>> {
    if view.placements.is_empty() {
        return vec![Line::from("no placement contract in this farm")];
    }
    let mut lines = Vec::new();
    for p in &view.placements {
        let replicas: Vec<String> = p
            .replicas
            .iter()
            .map(|r| {
                let state = serde_json::to_value(r.state).unwrap_or_default();
                format!(
                    "r{} {} e{} {}",
                    r.replica,
                    r.node.as_ref().map_or_else(|| "-".to_string(), short),
                    r.epoch,
                    state.as_str().unwrap_or("?")
                )
            })
            .collect();
        lines.push(Line::from(format!(
            "{} v{}: {}",
            p.contract,
            p.version,
            replicas.join(", ")
        )));
        if let Some(m) = p.moves.last() {
            let why = serde_json::to_value(&m.reason).unwrap_or_default();
            lines.push(Line::from(format!(
                "  last move: r{} to {} e{} ({})",
                m.replica,
                short(&m.to),
                m.epoch,
                why["why"].as_str().unwrap_or("?")
            )));
        }
    }
    lines
}

fn contracts_table<'a>(
    rows: impl Iterator<Item = (Option<&'a PublicKey>, &'a ContractRow)>,
    title: &'a str,
) -> Table<'a> {
    let rows: Vec<Row> = rows
        .map(|(node, c)| {
            let mut cells = Vec::new();
            if let Some(node) = node {
                cells.push(short(node));
            }
            let workloads: Vec<String> = c
                .workloads
                .iter()
                .map(|(name, state, restarts)| {
                    if *restarts > 0 {
                        format!("{name} {state} ({restarts} restarts)")
                    } else {
                        format!("{name} {state}")
                    }
                })
                .collect();
            cells.extend([
                c.id.clone(),
                c.version.map(|v| v.to_string()).unwrap_or("-".into()),
                c.state.clone(),
                if workloads.is_empty() {
                    c.message.clone()
                } else {
                    format!("{} · {}", c.message, workloads.join(", "))
                },
            ]);
            Row::new(cells)
        })
        .collect();
    let empty = rows.is_empty();
    let mut widths = vec![
        Constraint::Length(20),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Fill(1),
    ];
    let mut head = vec!["CONTRACT", "VERSION", "STATE", "MESSAGE"];
    if title == " Contracts " {
        widths.insert(0, Constraint::Length(16));
        head.insert(0, "NODE");
    }
    Table::new(rows, widths)
        .header(Row::new(head).style(bold()))
        .block(Block::bordered().title(if empty {
            format!("{}: none ", title.trim_end())
        } else {
            title.to_string()
        }))
}

fn node_screen(frame: &mut Frame, area: Rect, n: &NodeView, now: u64) {
    let reg = &n.registration;
    let cap = &reg.capacity;
    let mut lines = vec![
        Line::styled(format!("node      {}", n.node), bold()),
        Line::raw(format!("farm      {}", reg.farm)),
        Line::raw(format!(
            "version   {}   registered at {} ({} ago)",
            reg.version,
            reg.registered_at,
            age_text(now.saturating_sub(reg.registered_at))
        )),
        Line::raw(format!(
            "capacity  {} cpu, {} memory, {} ssd, {} hdd",
            cap.cpus,
            human_bytes(cap.memory_bytes),
            human_bytes(cap.ssd_bytes),
            human_bytes(cap.hdd_bytes)
        )),
        Line::raw(format!(
            "nics      {}",
            if reg.nics.is_empty() {
                "-".to_string()
            } else {
                reg.nics
                    .iter()
                    .map(|x| format!("{} {}", x.name, x.mac))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
    ];
    match &n.heartbeat {
        None => lines.push(Line::raw("heartbeat never")),
        Some(hb) => {
            let [cpu, mem, ssd, hdd] = n.gauges();
            lines.extend([
                Line::raw(format!(
                    "heartbeat {} ago (taken at {}), up {}",
                    age_text(hb.age(now)),
                    hb.time,
                    age_text(hb.uptime_secs)
                )),
                Line::raw(format!(
                    "  cpu     {} {} of {} reserved",
                    cpu.bar(20),
                    hb.reserved.cpus,
                    cap.cpus
                )),
                Line::raw(format!(
                    "  memory  {} {} of {} used ({} reserved, zosd {})",
                    mem.bar(20),
                    human_bytes(hb.used.memory_bytes),
                    human_bytes(cap.memory_bytes),
                    human_bytes(hb.reserved.memory_bytes),
                    human_bytes(hb.used.agent_rss_bytes)
                )),
                Line::raw(format!(
                    "  ssd     {} {} of {} used ({} reserved)",
                    ssd.bar(20),
                    human_bytes(hb.used.ssd_bytes),
                    human_bytes(cap.ssd_bytes),
                    human_bytes(hb.reserved.ssd_bytes)
                )),
                Line::raw(format!(
                    "  hdd     {} {} of {} used ({} reserved)",
                    hdd.bar(20),
                    human_bytes(hb.used.hdd_bytes),
                    human_bytes(cap.hdd_bytes),
                    human_bytes(hb.reserved.hdd_bytes)
                )),
                Line::raw(format!(
                    "  contracts {} running, {} provisioning, {} failed; {} workload(s)",
                    hb.contracts.running,
                    hb.contracts.provisioning,
                    hb.contracts.failed,
                    hb.workloads
                )),
                Line::raw(format!(
                    "  listening sockets {} (a node should have none but WireGuard's){}",
                    hb.listening_total,
                    hb.listening
                        .iter()
                        .map(|s| {
                            let label = s.label.map(|l| format!(" {l}")).unwrap_or_default();
                            format!(" {} {}:{}{label}", s.proto, s.address, s.port)
                        })
                        .collect::<String>()
                )),
            ]);
        }
    }
    let [detail, contracts] = Layout::vertical([
        Constraint::Length(lines.len() as u16 + 2),
        Constraint::Fill(1),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" Node {} ", short(&n.node)))),
        detail,
    );
    frame.render_widget(
        contracts_table(
            n.contracts.iter().map(|c| (None, c)),
            " Contracts on this node ",
        ),
        contracts,
    );
}
