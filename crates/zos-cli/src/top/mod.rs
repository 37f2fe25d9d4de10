//! `zos farm top FARM --notary URL`: a read-only terminal dashboard of a farm.
//!
//! A feed thread follows the notary: one snapshot of the farm's record and of every
//! node's records, then the notary's watch (puts and deletions) for as long as it lasts;
//! where there is no watch, or once it ended, a listing every `--refresh` seconds. The
//! terminal side (ratatui on crossterm) redraws from what the feed delivered and reads
//! keys. Nothing here writes to the notary: the client it opens is only listed and
//! watched.

mod model;
mod view;

use std::fmt;
use std::io::{self, BufWriter, Stdout};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{enable_raw_mode, EnterAlternateScreen};
use ratatui::prelude::CrosstermBackend;
use ratatui::Terminal;
use zos_contract::PublicKey;
use zos_notary::{KeyPrefix, Notary, NotaryKey, Record, WatchEvent};

use model::{visible, Records, Sort};

/// How the dashboard hears of changes.
#[derive(Debug, Clone, PartialEq)]
enum FeedState {
    Connecting,
    /// The notary's watch: every change as it happens.
    Watching,
    /// A listing every so often (the watch failed or ended: why).
    Polling {
        every: Duration,
        why: String,
    },
    /// The notary cannot be read.
    Failed(String),
}

impl fmt::Display for FeedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedState::Connecting => f.write_str("connecting"),
            FeedState::Watching => f.write_str("live (notary watch)"),
            FeedState::Polling { every, why } => {
                write!(f, "polling every {}s ({why})", every.as_secs())
            }
            FeedState::Failed(e) => write!(f, "notary unreadable: {e}"),
        }
    }
}

/// What the feed thread sends.
enum Feed {
    Snapshot(Vec<Record>),
    Event(WatchEvent),
    State(FeedState),
}

/// Which screen is shown.
#[derive(Debug, Clone, PartialEq)]
enum Screen {
    Farm,
    Node(PublicKey),
}

/// The dashboard's state.
struct App {
    farm_id: String,
    url: String,
    records: Records,
    feed: FeedState,
    screen: Screen,
    sort: Sort,
    filter: String,
    /// The filter is being typed.
    editing: bool,
    /// The selected row of the node list.
    selected: usize,
}

impl App {
    fn apply(&mut self, feed: Feed) {
        match feed {
            Feed::Snapshot(records) => self.records.replace(records),
            Feed::Event(WatchEvent::Put(record)) => self.records.put(record),
            Feed::Event(WatchEvent::Deleted(key)) => self.records.delete(&key),
            Feed::State(state) => self.feed = state,
        }
    }

    /// Handles a key; false to quit.
    fn key(&mut self, key: KeyEvent, now: u64) -> bool {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return false;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.len() < 128 => {
                    self.filter.push(c);
                    self.selected = 0;
                }
                _ => {}
            }
            return true;
        }
        match (&self.screen, key.code) {
            (_, KeyCode::Char('q')) => return false,
            (Screen::Node(_), KeyCode::Esc) => self.screen = Screen::Farm,
            (Screen::Farm, KeyCode::Esc) => self.filter.clear(),
            (Screen::Farm, KeyCode::Char('s')) => self.sort = self.sort.next(),
            (Screen::Farm, KeyCode::Char('/')) => self.editing = true,
            (Screen::Farm, KeyCode::Down | KeyCode::Char('j')) => {
                self.selected = self.selected.saturating_add(1)
            }
            (Screen::Farm, KeyCode::Up | KeyCode::Char('k')) => {
                self.selected = self.selected.saturating_sub(1)
            }
            (Screen::Farm, KeyCode::Enter) => {
                let view = self.records.farm_view(&self.farm_id);
                let nodes = visible(&view, &self.filter, self.sort, now);
                if let Some(n) = nodes.get(self.selected.min(nodes.len().saturating_sub(1))) {
                    self.screen = Screen::Node(n.node);
                }
            }
            _ => {}
        }
        true
    }
}

/// Leaves raw mode and the alternate screen however the dashboard ends.
struct TerminalGuard;

/// The screen a frame is drawn to: stdout behind a buffer as large as any frame.
type Tty = Terminal<CrosstermBackend<BufWriter<Stdout>>>;

/// Raw mode and the alternate screen, restored on a panic too (as `ratatui::init`
/// does). Each frame reaches the terminal in one write: through stdout's own buffer,
/// which flushes every kilobyte, a full frame took dozens, and a terminal (or tmux)
/// could show it half drawn.
fn open_tty() -> io::Result<Tty> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        ratatui::restore();
        hook(info);
    }));
    enable_raw_mode()?;
    ratatui::crossterm::execute!(io::stdout(), EnterAlternateScreen)?;
    Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
        256 << 10,
        io::stdout(),
    )))
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the dashboard until `q`.
pub fn run(farm_id: &str, url: &str, refresh: u64) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    NotaryKey::farm(farm_id).map_err(|e| anyhow::anyhow!("farm id {farm_id:?}: {e}"))?;
    if refresh == 0 {
        bail!("--refresh must be at least 1 second");
    }
    if !std::io::stdout().is_terminal() {
        bail!(
            "zos farm top draws on a terminal and stdout is none; \
             `zos farm show {farm_id} --json` and `zos node list --json` read the same records"
        );
    }
    // Open it here first, so that a bad URL is an error before the screen changes.
    zos_notary::open(url).with_context(|| format!("opening notary {url}"))?;

    let (tx, rx) = mpsc::channel();
    {
        let (farm_id, url) = (farm_id.to_string(), url.to_string());
        let every = Duration::from_secs(refresh);
        std::thread::Builder::new()
            .name("top-feed".into())
            .spawn(move || feed(&url, &farm_id, every, tx))
            .context("starting the notary feed")?;
    }

    let mut app = App {
        farm_id: farm_id.to_string(),
        url: url.to_string(),
        records: Records::default(),
        feed: FeedState::Connecting,
        screen: Screen::Farm,
        sort: Sort::Age,
        filter: String::new(),
        editing: false,
        selected: 0,
    };
    let mut terminal = open_tty().context("setting up the terminal")?;
    let _guard = TerminalGuard;
    loop {
        while let Ok(f) = rx.try_recv() {
            app.apply(f);
        }
        let now = crate::contract::now();
        terminal
            .draw(|frame| view::draw(frame, &app, now))
            .context("drawing")?;
        // Wake at least every quarter second: for what the feed sent, and for the
        // heartbeat ages, which grow without any record changing.
        if event::poll(Duration::from_millis(250)).context("reading the terminal")? {
            if let Event::Key(key) = event::read().context("reading the terminal")? {
                if key.kind == KeyEventKind::Press && !app.key(key, now) {
                    return Ok(());
                }
            }
        }
    }
}

/// The feed thread: a snapshot, then the watch; polling when there is no watch.
fn feed(url: &str, farm_id: &str, every: Duration, tx: mpsc::Sender<Feed>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Feed::State(FeedState::Failed(format!(
                "starting the async runtime: {e}"
            ))));
            return;
        }
    };
    rt.block_on(async move {
        let notary = match zos_notary::open(url) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Feed::State(FeedState::Failed(e.to_string())));
                return;
            }
        };
        let nodes = KeyPrefix::parse("nodes").expect("a valid prefix");
        let farm = KeyPrefix::parse(&format!("farms/{farm_id}")).expect("a checked farm id");
        let grid = KeyPrefix::parse(&format!("grid/{farm_id}")).expect("a checked farm id");
        let why = match watch(&notary, [&nodes, &farm, &grid], &tx).await {
            Ok(()) => "the notary's watch ended".to_string(),
            Err(e) => format!("no watch: {e}"),
        };
        loop {
            let listed = async {
                let mut records = notary.list(&nodes).await?;
                records.extend(notary.list(&farm).await?);
                records.extend(notary.list(&grid).await?);
                Ok::<_, zos_notary::NotaryError>(records)
            }
            .await;
            let sent = match listed {
                Ok(records) => {
                    tx.send(Feed::Snapshot(records)).is_ok()
                        && tx
                            .send(Feed::State(FeedState::Polling {
                                every,
                                why: why.clone(),
                            }))
                            .is_ok()
                }
                Err(e) => tx
                    .send(Feed::State(FeedState::Failed(e.to_string())))
                    .is_ok(),
            };
            if !sent {
                return; // the dashboard is gone
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Follows the notary's watches of `prefixes` (the nodes, the farm's record, the farm's
/// grid) until one ends (`Ok`) or cannot be set up (`Err`).
async fn watch(
    notary: &zos_notary::AnyNotary,
    prefixes: [&KeyPrefix; 3],
    tx: &mpsc::Sender<Feed>,
) -> Result<(), zos_notary::NotaryError> {
    let [nodes, farm, grid] = prefixes;
    let (mut records, mut a) = notary.subscribe_events(nodes).await?;
    let (farm_records, mut b) = notary.subscribe_events(farm).await?;
    let (grid_records, mut c) = notary.subscribe_events(grid).await?;
    records.extend(farm_records);
    records.extend(grid_records);
    if tx.send(Feed::Snapshot(records)).is_err()
        || tx.send(Feed::State(FeedState::Watching)).is_err()
    {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            e = a.recv() => e,
            e = b.recv() => e,
            e = c.recv() => e,
        };
        let Some(event) = event else {
            return Ok(());
        };
        if tx.send(Feed::Event(event)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use zos_contract::SecretKey;
    use zos_registry::{ContractCounts, Dmi, Heartbeat, NodeResources, Registration, Usage};

    use super::*;

    /// The screens fit a small terminal (80x24) and a tiny one without panicking.
    #[test]
    fn draws_in_small_terminals() {
        let sk = SecretKey::from_seed([9; 32]);
        let cap = NodeResources {
            cpus: 2,
            memory_bytes: 4 << 30,
            ssd_bytes: 0,
            hdd_bytes: 0,
        };
        let reg = Registration {
            farm: "farm-1".into(),
            version: "0.1.0".into(),
            capacity: cap,
            offered: None,
            nics: vec![],
            dmi: Dmi::default(),
            registered_at: 1,
        };
        let hb = Heartbeat {
            uptime_secs: 5,
            reserved: cap,
            used: Usage::default(),
            contracts: ContractCounts::default(),
            workloads: 0,
            listening: vec![],
            listening_total: 0,
            time: 100,
        };
        let mut app = App {
            farm_id: "farm-1".into(),
            url: "dir:///x".into(),
            records: Records::default(),
            feed: FeedState::Watching,
            screen: Screen::Farm,
            sort: Sort::Age,
            filter: String::new(),
            editing: false,
            selected: 0,
        };
        app.records
            .replace(vec![reg.sign(&sk, 1).unwrap(), hb.sign(&sk, 100).unwrap()]);
        for (w, h) in [(80, 24), (20, 5)] {
            let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
            term.draw(|f| view::draw(f, &app, 160)).unwrap();
            if w == 80 {
                let text: String = term
                    .backend()
                    .buffer()
                    .content()
                    .iter()
                    .map(|c| c.symbol())
                    .collect();
                assert!(text.contains(&model::short(&sk.public())), "{text}");
                assert!(
                    text.contains("1m ago") || text.contains("60s ago"),
                    "{text}"
                );
            }
        }
        app.screen = Screen::Node(sk.public());
        for (w, h) in [(80, 24), (20, 5)] {
            let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
            term.draw(|f| view::draw(f, &app, 160)).unwrap();
        }
    }
}
