//! Consumers of every snapshot: one small trait, and the task that feeds a sink from a
//! `broadcast` subscription.

use std::{io::Write, sync::Arc};

use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::api::Snapshot;

/// Whether a sink wants more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sink is done (e.g. its pipe closed): the caller may stop.
    Stop,
}

/// A consumer of snapshots. It reads them, never drives the engine.
pub trait Sink: Send {
    fn consume(&mut self, snapshot: &Snapshot) -> anyhow::Result<Flow>;
}

/// Feeds `sink` every snapshot until the engine closes the channel or the sink stops. A sink
/// that fell behind loses the oldest snapshots; how many is said on stderr.
pub async fn feed(mut rx: Receiver<Arc<Snapshot>>, mut sink: impl Sink) -> anyhow::Result<()> {
    loop {
        match rx.recv().await {
            Ok(s) => {
                if sink.consume(&s)? == Flow::Stop {
                    return Ok(());
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("output fell behind the engine: {n} intervals not written");
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// One line per snapshot to a writer: JSON Lines or plain lines.
pub struct LineSink<W: Write + Send> {
    out: W,
    render: fn(&Snapshot) -> anyhow::Result<String>,
}

impl<W: Write + Send> LineSink<W> {
    pub fn new(out: W, render: fn(&Snapshot) -> anyhow::Result<String>) -> Self {
        Self { out, render }
    }
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn consume(&mut self, snapshot: &Snapshot) -> anyhow::Result<Flow> {
        let line = (self.render)(snapshot)?;
        // A closed pipe (e.g. `| head`) ends the output quietly.
        match writeln!(self.out, "{line}").and_then(|()| self.out.flush()) {
            Ok(()) => Ok(Flow::Continue),
            Err(_) => Ok(Flow::Stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sink_gets_every_snapshot_in_order_and_a_slow_one_is_told_what_it_lost() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        struct Collect(std::sync::mpsc::Sender<u64>);
        impl Sink for Collect {
            fn consume(&mut self, s: &Snapshot) -> anyhow::Result<Flow> {
                self.0.send(s.seq)?;
                Ok(if s.seq == 3 { Flow::Stop } else { Flow::Continue })
            }
        }
        for seq in 1..=3 {
            tx.send(Arc::new(Snapshot { seq, ..Default::default() })).unwrap();
        }
        feed(rx, Collect(out_tx)).await.unwrap();
        assert_eq!(out_rx.try_iter().collect::<Vec<_>>(), [1, 2, 3]);

        // Six sent into a channel of four before the sink reads: it gets the last four.
        let rx = tx.subscribe();
        for seq in 4..=9 {
            tx.send(Arc::new(Snapshot { seq, ..Default::default() })).unwrap();
        }
        drop(tx);
        let mut lines = Vec::new();
        feed(rx, LineSink::new(&mut lines, |s| Ok(s.seq.to_string()))).await.unwrap();
        assert_eq!(String::from_utf8(lines).unwrap(), "6\n7\n8\n9\n");
    }
}
