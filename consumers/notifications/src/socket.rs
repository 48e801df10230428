//! The live stream as a WebSocket: `GET /api/v1/stream` with `Upgrade: websocket` carries
//! the same messages as the event stream, one text message each (the JSON the event stream
//! sends as `data`), to the same per-user connections of the [`LiveHub`].
//!
//! The client has nothing to say: text frames it sends are read and ignored, a binary frame
//! or one larger than [`MAX_MESSAGE`] closes the socket with a protocol error. The server
//! pings every [`PING_EVERY`] and drops a client it has not heard from (a pong or any frame)
//! for [`SILENCE`]; a client's own pings are answered.
//!
//! How a session ends, by its close code:
//! - 1001: the process is shutting down; reconnect (another replica answers);
//! - 1003: the client sent a binary frame;
//! - 1007: the client sent a text frame that is not UTF-8;
//! - 1002: the client broke the protocol otherwise (an unmasked frame, a bad opcode...);
//! - 1009: the client sent a message larger than [`MAX_MESSAGE`];
//! - 4401: the token expired; reconnect with a fresh one;
//! - 4408: the client stopped reading and its messages piled up; reconnect, and read
//!   `GET /api/v1/me/notifications` for what was missed.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::time::Instant;

use crate::live::{Connection, LiveHub};

/// The largest message a client may send. It has nothing to say, so this only bounds what a
/// careless or hostile one costs.
pub const MAX_MESSAGE: usize = 4096;
/// The socket's read buffer (tungstenite's default is 128 KiB, allocated per connection):
/// enough for any message a client may send.
pub const READ_BUFFER: usize = 2 * MAX_MESSAGE;
/// How often the server pings: often enough that proxies with a 60 s idle timeout keep the
/// connection, rarely enough that a million idle sockets cost little.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A client not heard from for this long (two pings unanswered) is gone: its socket is
/// dropped, and its user counts as disconnected, so their messages go as push.
pub const SILENCE: Duration = Duration::from_secs(40);
/// How long a close waits for the client's own close frame before dropping the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// A frame the client's TCP window has not taken within this long means a client that
/// stopped reading: its socket is dropped, so it holds no connection slot.
pub const SEND_DEADLINE: Duration = Duration::from_secs(10);

/// Sends one frame within [`SEND_DEADLINE`]; `false`: the socket is gone or stalled.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_DEADLINE, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// Why the server ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    ShuttingDown,
    BinaryFrame,
    NotUtf8,
    ProtocolError,
    TooBig,
    TokenExpired,
    TooSlow,
}

impl Ending {
    /// The close frame that tells the client why, and what to do.
    pub fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Self::ShuttingDown => (1001, "the server is shutting down; reconnect"),
            Self::BinaryFrame => (1003, "binary frames are not accepted"),
            Self::NotUtf8 => (1007, "a text frame was not UTF-8"),
            Self::ProtocolError => (1002, "the frame broke the WebSocket protocol"),
            Self::TooBig => (1009, "messages to the server are limited to 4096 bytes"),
            Self::TokenExpired => (4401, "the token expired; reconnect with a fresh one"),
            Self::TooSlow => (
                4408,
                "messages piled up unread; reconnect and read /api/v1/me/notifications",
            ),
        };
        CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }
    }

    /// The ending a read error calls for; `None`: the connection is gone, nothing to say.
    pub fn for_error(err: axum::Error) -> Option<Self> {
        use tungstenite::error::{CapacityError, Error};
        let inner = err.into_inner();
        match inner.downcast_ref::<Error>()? {
            Error::Capacity(CapacityError::MessageTooLong { .. }) => Some(Self::TooBig),
            Error::Capacity(_) => Some(Self::ProtocolError),
            Error::Utf8(_) => Some(Self::NotUtf8),
            Error::Protocol(_) => Some(Self::ProtocolError),
            _ => None,
        }
    }
}

/// Runs one upgraded connection until it ends: the user's messages out, the client's frames
/// in, pings in between, the close that says why at the end.
pub async fn session(
    mut socket: WebSocket,
    mut connection: Connection,
    hub: std::sync::Arc<LiveHub>,
    token_left: Duration,
) {
    let expiry = tokio::time::sleep(token_left);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    let ending = loop {
        tokio::select! {
            message = connection.next() => {
                let Some(message) = message else {
                    break if hub.is_closing() { Ending::ShuttingDown } else { Ending::TooSlow };
                };
                let Ok(text) = serde_json::to_string(&message) else { continue };
                if !send(&mut socket, Message::text(text)).await {
                    return;
                }
            }
            () = &mut expiry => break Ending::TokenExpired,
            _ = ping.tick() => {
                if heard.elapsed() >= SILENCE {
                    tracing::debug!("websocket client silent; dropping it");
                    return;
                }
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    return;
                }
            }
            frame = socket.recv() => match frame {
                None => return,
                Some(Err(err)) => match Ending::for_error(err) {
                    Some(ending) => break ending,
                    None => return,
                },
                Some(Ok(Message::Binary(_))) => break Ending::BinaryFrame,
                // The reply to a client's close is sent by the next read, which ends.
                Some(Ok(_)) => heard = Instant::now(),
            },
        }
    };
    drop(connection);
    close(socket, ending).await;
}

/// Sends the close frame, then waits briefly for the client's, so both ends close cleanly;
/// all within [`CLOSE_WAIT`] (a client that stopped reading gets no more time).
async fn close(mut socket: WebSocket, ending: Ending) {
    metrics::counter!("herald_notifications_websocket_closed_total", "code" => ending.frame().code.to_string())
        .increment(1);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if socket
            .send(Message::Close(Some(ending.frame())))
            .await
            .is_ok()
        {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_a_distinct_code_and_a_reason_within_the_frame_limit() {
        let endings = [
            Ending::ShuttingDown,
            Ending::BinaryFrame,
            Ending::NotUtf8,
            Ending::ProtocolError,
            Ending::TooBig,
            Ending::TokenExpired,
            Ending::TooSlow,
        ];
        let mut codes: Vec<u16> = endings.iter().map(|e| e.frame().code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), endings.len());
        for ending in endings {
            // A close frame's payload is at most 125 bytes, 2 of them the code.
            assert!(ending.frame().reason.len() <= 123, "{ending:?}");
        }
    }

    #[test]
    fn read_errors_map_to_the_protocol_error_they_are() {
        use tungstenite::error::{CapacityError, Error, ProtocolError};
        let wrap = |err: Error| axum::Error::new(err);
        assert_eq!(
            Ending::for_error(wrap(Error::Capacity(CapacityError::MessageTooLong {
                size: 5000,
                max_size: 4096
            }))),
            Some(Ending::TooBig)
        );
        assert_eq!(
            Ending::for_error(wrap(Error::Protocol(
                ProtocolError::UnmaskedFrameFromClient
            ))),
            Some(Ending::ProtocolError)
        );
        assert_eq!(Ending::for_error(wrap(Error::ConnectionClosed)), None);
        assert_eq!(
            Ending::for_error(axum::Error::new(std::io::Error::other("reset"))),
            None
        );
    }
}
