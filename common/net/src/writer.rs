//! The writing side of a connection: [`spawn_writer`] starts a task that encodes queued messages
//! and writes everything queued in one `write`, so frames are batched under load and sent at once
//! when the connection is otherwise idle; [`spawn_outbox`] adds an urgent queue and a count of
//! what waits ([`Outbox`]); [`send_one`] writes a single message before a writer exists.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use blitzen_protocol::frame::encode;
use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use crate::framed::WriteSide;

/// Bytes gathered into one write at most.
const WRITE_BATCH: usize = 1024 * 1024;

/// Starts a task that writes every message sent on the returned channel, in order, batching
/// whatever is queued into one write. It ends when every sender is dropped (then shuts the
/// socket down for writing) or when a write fails; await the handle to know everything left.
pub fn spawn_writer<M: Serialize + Send + 'static>(
    socket: WriteSide,
) -> (mpsc::UnboundedSender<M>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel::<M>();
    let (_, urgent) = mpsc::unbounded_channel::<M>();
    (tx, tokio::spawn(write_queued(socket, rx, urgent, None)))
}

/// The queues of a writer task started by [`spawn_outbox`].
///
/// Messages given to [`Outbox::send`] go out in order; those given to [`Outbox::send_urgent`]
/// go out before any still queued by `send` (acknowledgements and heartbeats, which must not
/// wait behind a million submissions). [`Outbox::has_room`] and [`Outbox::room`] let a sender
/// keep what it has not queued yet in its own compact form while the socket is slow.
pub struct Outbox<M> {
    tx: mpsc::UnboundedSender<M>,
    urgent: mpsc::UnboundedSender<M>,
    queued: std::sync::Arc<Queued>,
}

impl<M> std::fmt::Debug for Outbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.queued.count.load(Ordering::Relaxed))
            .finish()
    }
}

/// Messages given to [`Outbox::send`] and not yet encoded, and a wake-up when they fall below
/// the mark.
struct Queued {
    count: AtomicUsize,
    below: Notify,
    mark: usize,
}

impl<M> Outbox<M> {
    /// Queues `msg` behind the others; an error when the writer has ended.
    pub fn send(&self, msg: M) -> Result<(), mpsc::error::SendError<M>> {
        self.queued.count.fetch_add(1, Ordering::Relaxed);
        self.tx.send(msg).inspect_err(|_| {
            self.queued.count.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Queues `msg` ahead of everything given to [`Outbox::send`].
    pub fn send_urgent(&self, msg: M) -> Result<(), mpsc::error::SendError<M>> {
        self.urgent.send(msg)
    }

    /// Whether fewer messages than the mark wait to be encoded.
    pub fn has_room(&self) -> bool {
        self.queued.count.load(Ordering::Relaxed) < self.queued.mark
    }

    /// Waits until [`Outbox::has_room`].
    pub async fn room(&self) {
        loop {
            let below = self.queued.below.notified();
            if self.has_room() {
                return;
            }
            below.await;
        }
    }
}

/// [`spawn_writer`] with an urgent queue and a count of queued messages: see [`Outbox`]. It has
/// room while fewer than `mark` messages wait.
pub fn spawn_outbox<M: Serialize + Send + 'static>(
    socket: WriteSide,
    mark: usize,
) -> (Outbox<M>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel::<M>();
    let (urgent_tx, urgent) = mpsc::unbounded_channel::<M>();
    let queued = std::sync::Arc::new(Queued {
        count: AtomicUsize::new(0),
        below: Notify::new(),
        mark: mark.max(1),
    });
    let handle = tokio::spawn(write_queued(socket, rx, urgent, Some(queued.clone())));
    (Outbox { tx, urgent: urgent_tx, queued }, handle)
}

/// The writer task: encodes what is queued (urgent first) into one buffer, up to a batch, and
/// writes it at once; ends when the main queue closes.
async fn write_queued<M: Serialize>(
    mut socket: WriteSide,
    mut rx: mpsc::UnboundedReceiver<M>,
    mut urgent: mpsc::UnboundedReceiver<M>,
    queued: Option<std::sync::Arc<Queued>>,
) {
    // One message taken from the main queue: counted off, and a waiting sender woken when the
    // count falls below the mark.
    let taken = |queued: &Option<std::sync::Arc<Queued>>| {
        if let Some(q) = queued
            && q.count.fetch_sub(1, Ordering::Relaxed) == q.mark
        {
            q.below.notify_one();
        }
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        // A closed urgent queue only disables its branch; the writer ends with the main one.
        let first = tokio::select! {
            biased;
            Some(msg) = urgent.recv() => msg,
            msg = rx.recv() => match msg {
                Some(msg) => {
                    taken(&queued);
                    msg
                }
                None => break,
            },
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if let Err(e) = encode(&msg, &mut buf) {
                // A message over the frame limit is a bug of the sender; drop it loudly.
                tracing::error!(error = %e, "cannot encode an outgoing message; dropped");
            }
            if buf.len() < WRITE_BATCH {
                next = match urgent.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => rx.try_recv().ok().inspect(|_| taken(&queued)),
                };
            }
        }
        // A TLS stream may hold the end of what it encrypted until flushed.
        if let Err(e) = write_flushed(&mut socket, &buf).await {
            debug!(error = %e, "connection write failed");
            break;
        }
        buf.clear();
    }
    // Whoever waits for room learns of the end by its next send failing.
    if let Some(q) = &queued {
        q.count.store(0, Ordering::Relaxed);
        q.below.notify_one();
    }
    let _ = socket.shutdown().await;
}

/// Writes one message directly (for handshakes, before a writer task exists).
pub async fn send_one<M: Serialize, W: AsyncWrite + Unpin + ?Sized>(
    socket: &mut W,
    msg: &M,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).map_err(io::Error::other)?;
    write_flushed(socket, &buf).await
}

/// Writes `bytes` and flushes (a no-op on TCP; on TLS it sends the last record).
async fn write_flushed<W: AsyncWrite + Unpin + ?Sized>(
    socket: &mut W,
    bytes: &[u8],
) -> io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::FramedReader;
    use std::time::Duration;

    #[tokio::test]
    async fn urgent_messages_overtake_queued_ones_and_room_is_counted() {
        let (near, far) = tokio::io::duplex(64);
        let (outbox, writer) = spawn_outbox::<String>(Box::new(near), 2);
        outbox.send("first".into()).expect("writer alive");
        assert!(outbox.has_room(), "one queued, the mark is two");
        outbox.send("second".into()).expect("writer alive");
        outbox.send("third".into()).expect("writer alive");
        assert!(!outbox.has_room(), "three queued");
        outbox.send_urgent("urgent".into()).expect("writer alive");
        // The writer has not run yet: it takes the urgent one first, then the queue.
        tokio::time::timeout(Duration::from_secs(5), outbox.room()).await.expect("room");
        assert!(outbox.has_room());
        let mut reader = FramedReader::new(Box::new(far), 1024);
        for expected in ["urgent", "first", "second", "third"] {
            let got: String = reader.next().await.expect("valid").expect("a message");
            assert_eq!(got, expected);
        }
        drop(outbox);
        writer.await.expect("writer ends with its queue");
        assert!(reader.next::<String>().await.expect("clean end").is_none());
    }
}
