//! Connections: the accept loop, with a limit on open connections, a deadline on request
//! heads (which is also the keep-alive idle timeout) and one on request bodies, and the
//! graceful drain at shutdown.
//!
//! * **Connection limit.** At most `max_connections` connections are open at once. At the
//!   limit the server stops accepting: new connections wait in the kernel's accept queue
//!   (its backlog) until one closes, instead of being refused, so a client is answered late
//!   rather than never, and the process never runs out of file descriptors. Since every
//!   connection that sends nothing is closed after the header timeout, the wait is bounded.
//! * **Header timeout.** From the moment the server waits for a request (a new connection,
//!   or a kept-alive one after its last answer) the client has `header_timeout` to send the
//!   complete head; otherwise the connection is closed. A connection that sends nothing, or
//!   dribbles its headers, is closed; so is a kept-alive connection left idle that long.
//! * **Body timeout.** Once the head is in, the whole body must arrive within
//!   `body_timeout`; otherwise the request is answered 408 and the connection closed.
//! * **Write timeout.** An answer that cannot be written for `write_timeout` (the client
//!   reads none of it: its buffers and ours are full) closes the connection, so a client
//!   that asks and never reads cannot hold a connection slot.
//! * **Drain.** When asked to stop, the loop stops accepting and closes the listener, idle
//!   connections are closed, and each connection with a request in flight closes once it
//!   is answered; [`serve`] returns when every connection is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The most connections open at once.
    pub(super) max_connections: usize,
    /// Time to send a complete request head.
    pub(super) header_timeout: Duration,
    /// Time to send a request's body once its head is in.
    pub(super) body_timeout: Duration,
    /// Time a write may wait for the client to read.
    pub(super) write_timeout: Duration,
}

/// The most `max_connections` may be (the permits of a semaphore, taken all at once to wait
/// for the drain).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Serves `app` on `listener` until `stop` turns true, then drains: returns once every
/// connection is closed.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let max = limits.max_connections.clamp(1, MAX_CONNECTIONS_LIMIT);
    let slots = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let body_timeout = limits.body_timeout;
    let app = app.layer(axum::middleware::map_request(move |request: Request| {
        std::future::ready(with_body_deadline(request, body_timeout))
    }));

    loop {
        // A slot first: at the limit, new connections wait in the kernel's queue.
        let permit = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // A connection reset before it was accepted concerns that client only; out
                // of file descriptors (or the like) passes: wait a little and go on.
                if !is_connection_error(&e) {
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // Dropped last, once the connection (and its socket) is gone.
            let _permit = permit;
            let stream = WriteDeadline::new(stream, limits.write_timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it is closed: all slots back means all closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// A stream whose writes fail with `TimedOut` once one has waited `limit` without the
/// client reading any of it. Each write that makes progress starts the wait over.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            deadline: None,
        }
    }

    /// `poll` (a write, flush or shutdown of the inner stream) under the deadline.
    fn poll_within<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>>
    where
        S: Unpin,
    {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.deadline = None;
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client read nothing of the answer in time",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .poll_within(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .poll_within(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .poll_within(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .poll_within(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Whether an accept error concerns only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The request with its body bounded in time: reading it fails with [`BodyTimeout`] once
/// `timeout` has passed.
fn with_body_deadline(request: Request, timeout: Duration) -> Request {
    // Most requests (every GET) have no body: no timer for them.
    if request.body().is_end_stream() {
        return request;
    }
    request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        })
    })
}

/// The error of a body not received in time.
#[derive(Debug)]
pub(super) struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {}s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl BodyTimeout {
    /// The [`BodyTimeout`] in the source chain of `error`, if any.
    pub(super) fn find<'a>(
        error: &'a (dyn std::error::Error + 'static),
    ) -> Option<&'a BodyTimeout> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
                return Some(timeout);
            }
            current = e.source();
        }
        None
    }
}

/// A body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that reads nothing: the write fails with `TimedOut` once it has waited the
    /// limit; a client that reads lets the same write through.
    #[test]
    fn a_write_the_client_never_reads_times_out() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let answer = vec![b'x'; 1 << 20];
            let (server, _client) = tokio::io::duplex(4096);
            let mut server = WriteDeadline::new(server, Duration::from_millis(200));
            let err = server.write_all(&answer).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

            let (server, mut client) = tokio::io::duplex(4096);
            let mut server = WriteDeadline::new(server, Duration::from_millis(200));
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.map(|_| got.len())
            });
            server.write_all(&answer).await.unwrap();
            server.shutdown().await.unwrap();
            drop(server);
            assert_eq!(reader.await.unwrap().unwrap(), answer.len());
        });
    }

    /// A body that sends one frame and then nothing, ever.
    struct Stalling(bool);

    impl HttpBody for Stalling {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"half")))))
        }
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_with_the_timeout() {
        let request = Request::new(Body::new(Stalling(false)));
        let request = with_body_deadline(request, Duration::from_millis(50));
        let err = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .unwrap_err();
        let found = BodyTimeout::find(&err).expect("a BodyTimeout in the chain");
        assert_eq!(found.0, Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_body_in_time_is_read_whole() {
        let request = Request::new(Body::from("complete"));
        let request = with_body_deadline(request, Duration::from_secs(30));
        let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"complete");
    }
}
