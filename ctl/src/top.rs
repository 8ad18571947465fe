//! `tracectl top`: polls `Connections`, `GetStats` and `Gpu` and shows, per
//! unit, container, pod, process or destination, how many connections start
//! each second, are open, failed or were denied (and, on hosts with GPUs,
//! their GPU memory and SM use). On a terminal it redraws in
//! place on the alternate screen and takes keys; otherwise (or with
//! `--once` / `-n`) it prints one plain view per interval.

mod model;
mod term;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use connectracer_proto::api::ConnectionsParams;

use crate::client::ClientError;
use crate::out::{self, Printer};
use crate::transport::Transport;
use model::{next, Model};
pub use model::{GroupBy, SortBy};

/// The most connections one poll asks for (the daemon's cap).
const POLL_LIMIT: u32 = 100_000;

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Group rows by this (key g cycles).
    #[arg(long, value_enum, default_value_t = GroupBy::Unit)]
    pub by: GroupBy,
    /// Sort rows by this column (key s cycles).
    #[arg(long, value_enum, default_value_t = SortBy::Rate)]
    pub sort: SortBy,
    /// Seconds between refreshes.
    #[arg(short = 'd', long = "interval", value_name = "SECONDS", default_value_t = 1.0,
          value_parser = interval)]
    pub interval: f64,
    /// Print one view (after one interval, for the rates) and exit.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print this many views and exit.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,
    /// Rows shown when not on a terminal (on one: the window's height).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rows: usize,
}

fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds from 0.1 to 3600")),
    }
}

/// One poll: the model takes the connections, the stats go to the frame.
struct Poller<'a> {
    c: &'a mut Transport,
    model: Model,
    last: Instant,
    stats: connectracer_proto::api::Stats,
}

impl Poller<'_> {
    fn poll(&mut self) -> Result<(), ClientError> {
        let p = ConnectionsParams {
            limit: Some(POLL_LIMIT),
            ..Default::default()
        };
        let conns = self.c.connections(&p)?.connections;
        self.stats = self.c.stats()?.stats;
        // GPU columns only where the daemon reports GPUs: a daemon without
        // the telemetry, without GPUs, or a bus connection shows none.
        let gpu = self.c.gpu().ok().filter(|g| g.enabled && !g.devices.is_empty());
        self.model.gpu(gpu.as_ref().map(|g| g.processes.as_slice()));
        let now = Instant::now();
        self.model
            .sample(&conns, now.duration_since(self.last).as_secs_f64());
        self.last = now;
        Ok(())
    }
}

pub fn top(c: &mut Transport, p: Printer, args: &TopArgs) -> Result<(), ClientError> {
    let mut poller = Poller {
        c,
        model: Model::default(),
        last: Instant::now(),
        stats: Default::default(),
    };
    // The baseline: what is in the table already counts, but not as a rate.
    poller.poll()?;
    let every = Duration::from_secs_f64(args.interval);
    let scripted = args.once || args.iterations.is_some();
    if std::io::stdout().is_terminal() && !scripted && !p.format.is_json() {
        live(&mut poller, p, args, every)
    } else {
        plain(&mut poller, p, args, every)
    }
}

/// Periodic views for pipes and scripts: a blank line between views.
fn plain(poller: &mut Poller<'_>, p: Printer, args: &TopArgs, every: Duration) -> Result<(), ClientError> {
    let views = if args.once { Some(1) } else { args.iterations };
    let mut shown = 0;
    while views.is_none_or(|n| shown < n) {
        std::thread::sleep(every);
        poller.poll()?;
        let frame = poller.model.frame(args.by, args.sort, &poller.stats);
        if p.format.is_json() {
            out::write(&format!("{}\n", serde_json::json!({ "top": frame })));
        } else {
            let sep = if shown > 0 { "\n" } else { "" };
            out::write(&format!("{sep}{}", frame.render(args.rows, p.colour)));
        }
        shown += 1;
    }
    Ok(())
}

/// Redraws in place until q (or Ctrl-C); g and s cycle the grouping and
/// the order, u c p d pick a grouping, and each applies at once.
fn live(poller: &mut Poller<'_>, p: Printer, args: &TopArgs, every: Duration) -> Result<(), ClientError> {
    let screen = term::Screen::enter();
    let (mut by, mut sort) = (args.by, args.sort);
    let mut due = Instant::now() + every;
    screen.draw(
        &poller
            .model
            .frame(by, sort, &poller.stats)
            .render(usize::MAX, p.colour),
    );
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        if !screen.interactive() {
            std::thread::sleep(wait);
        } else if let Some(k) = screen.key(wait) {
            match k {
                b'q' | b'Q' | 3 => return Ok(()),
                b'g' => by = next(&GroupBy::ALL, by),
                b's' => sort = next(&SortBy::ALL, sort),
                b'u' => by = GroupBy::Unit,
                b'c' => by = GroupBy::Container,
                b'o' => by = GroupBy::Pod,
                b'p' => by = GroupBy::Process,
                b'd' => by = GroupBy::Destination,
                _ => continue,
            }
            screen.draw(
                &poller
                    .model
                    .frame(by, sort, &poller.stats)
                    .render(usize::MAX, p.colour),
            );
            continue;
        }
        if Instant::now() >= due {
            poller.poll()?;
            due = Instant::now() + every;
            screen.draw(
                &poller
                    .model
                    .frame(by, sort, &poller.stats)
                    .render(usize::MAX, p.colour),
            );
        }
    }
}
