//! The two queues of batches in front of the inference workers: the stream's, and the
//! interactive lane's (comments posted to the HTTP API). A moderator's try-it request must not
//! wait behind a backlog, so a free worker takes an interactive batch first — but never two in a
//! row while stream batches wait: the stream keeps at least every other batch (its batches are
//! also the larger ones), so the API can slow it, never starve it.

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

/// A batch and the lane it came from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken<B> {
    Stream(B),
    Interactive(B),
}

/// The two queues of batches (`B`: a pipeline `Batch`; anything in the tests).
pub(crate) struct Lanes<B> {
    stream: mpsc::Receiver<B>,
    interactive: mpsc::Receiver<B>,
    /// The last batch taken was interactive: a waiting stream batch goes next.
    last_interactive: bool,
    /// Where a worker thread sleeps while both queues are empty.
    runtime: Handle,
}

impl<B> Lanes<B> {
    pub(crate) fn new(
        stream: mpsc::Receiver<B>,
        interactive: mpsc::Receiver<B>,
        runtime: Handle,
    ) -> Lanes<B> {
        Lanes {
            stream,
            interactive,
            last_interactive: false,
            runtime,
        }
    }

    /// The next batch for a worker thread (blocking); `None` once the stream's queue is closed
    /// and drained (interactive batches still queued then are taken first).
    pub(crate) fn next(&mut self) -> Option<Taken<B>> {
        let taken = self.ready().or_else(|| self.wait());
        self.last_interactive = matches!(taken, Some(Taken::Interactive(_)));
        taken
    }

    /// A batch already queued, by the lanes' order; `None` when both queues are empty.
    fn ready(&mut self) -> Option<Taken<B>> {
        if !self.last_interactive {
            if let Ok(b) = self.interactive.try_recv() {
                return Some(Taken::Interactive(b));
            }
        }
        match self.stream.try_recv() {
            Ok(b) => Some(Taken::Stream(b)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                self.interactive.try_recv().ok().map(Taken::Interactive)
            }
        }
    }

    /// Sleeps until a batch arrives on either lane; `None` when the stream's queue closed.
    fn wait(&mut self) -> Option<Taken<B>> {
        let (stream, interactive) = (&mut self.stream, &mut self.interactive);
        let taken = self.runtime.block_on(async {
            tokio::select! {
                biased;
                // A closed interactive queue disables this branch; the stream's decides.
                Some(b) = interactive.recv() => Some(Taken::Interactive(b)),
                b = stream.recv() => b.map(Taken::Stream),
            }
        });
        taken.or_else(|| self.interactive.try_recv().ok().map(Taken::Interactive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lanes(rt: &tokio::runtime::Runtime) -> (mpsc::Sender<u32>, mpsc::Sender<u32>, Lanes<u32>) {
        let (stream, stream_rx) = mpsc::channel(16);
        let (interactive, interactive_rx) = mpsc::channel(16);
        let lanes = Lanes::new(stream_rx, interactive_rx, rt.handle().clone());
        (stream, interactive, lanes)
    }

    #[test]
    fn interactive_batches_go_first_but_never_twice_in_a_row_while_the_stream_waits() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (stream, interactive, mut lanes) = lanes(&rt);
        for n in 0..3 {
            stream.try_send(n).unwrap();
            interactive.try_send(100 + n).unwrap();
        }
        interactive.try_send(103).unwrap();
        let order: Vec<Taken<u32>> = (0..7).map(|_| lanes.next().unwrap()).collect();
        use Taken::{Interactive as I, Stream as S};
        assert_eq!(
            order,
            vec![I(100), S(0), I(101), S(1), I(102), S(2), I(103)]
        );
    }

    #[test]
    fn a_worker_waiting_on_empty_lanes_wakes_for_either_and_ends_when_the_stream_closes() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (stream, interactive, mut lanes) = lanes(&rt);
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            interactive.blocking_send(7).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            stream.blocking_send(1).unwrap();
            interactive.blocking_send(8).unwrap();
            // Both senders dropped: the stream closes with an interactive batch still queued.
        });
        assert_eq!(lanes.next(), Some(Taken::Interactive(7)));
        feeder.join().unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| lanes.next()).collect();
        assert_eq!(rest, vec![Taken::Stream(1), Taken::Interactive(8)]);
    }
}
