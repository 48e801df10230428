//! The counters' own connection to Redis: one socket, owned by the task that sends the
//! transactions, speaking the few RESP2 commands they need.
//!
//! redis-rs's multiplexed connection serves any number of callers at once, through a task of
//! its own, a sink and a general reply parser. The counters send one transaction at a time
//! and always read the same few reply types, so that machinery was most of the limiter's
//! cost: under the edge benchmark its frames held 7.6% of the ingress's CPU. Here a
//! transaction is one write and the replies are read straight off the socket by the task that
//! waits for them. The URL is still read by redis-rs, so every `redis://` and
//! `redis+unix://` form it accepts works here too (user, password, database).

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// A bulk reply longer than this means the stream is not what it should be.
const MAX_BULK: usize = 1 << 20;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// A simple string (`+OK`, `+QUEUED`): no counter command needs its text, so none is kept.
    Status,
    Error(String),
    Int(i64),
    /// `None` is the null bulk string, e.g. a `SET ... NX` that set nothing.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array: EXEC after a WATCHed key changed.
    Array(Option<Vec<Reply>>),
}

/// An argument of a command.
pub(super) enum Arg<'a> {
    Text(&'a str),
    Int(u64),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

pub(super) struct Link {
    stream: BufReader<Box<dyn Stream>>,
    /// The request being written, kept between transactions for its capacity.
    out: Vec<u8>,
    /// The reply line being read, likewise.
    line: Vec<u8>,
}

impl Link {
    /// Connects, signs in and selects the URL's database.
    pub async fn open(info: &ConnectionInfo) -> Result<Self, RedisError> {
        let stream: Box<dyn Stream> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "rate-limit counters need a redis:// or redis+unix:// URL",
                )));
            }
        };
        let mut link = Self {
            stream: BufReader::new(stream),
            out: Vec::new(),
            line: Vec::new(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec![Arg::Text("AUTH")];
            auth.extend(settings.username().map(Arg::Text));
            auth.push(Arg::Text(password));
            command(&mut link.out, &auth);
            link.call_ok("AUTH").await?;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            command(&mut link.out, &[Arg::Text("SELECT"), Arg::Text(&db)]);
            link.call_ok("SELECT").await?;
        }
        command(&mut link.out, &[Arg::Text("PING")]);
        link.call_ok("PING").await?;
        Ok(link)
    }

    /// Starts a transaction: commands queued until [`Link::exec`] run together in Redis.
    pub fn multi(&mut self) {
        self.out.clear();
        command(&mut self.out, &[Arg::Text("MULTI")]);
    }

    pub fn queue(&mut self, args: &[Arg<'_>]) {
        command(&mut self.out, args);
    }

    /// Sends the transaction of `queued` commands and reads each command's reply.
    pub async fn exec(&mut self, queued: usize) -> Result<Vec<Reply>, RedisError> {
        command(&mut self.out, &[Arg::Text("EXEC")]);
        self.send().await?;
        // MULTI's +OK, then +QUEUED per command (or the error that will abort EXEC).
        let mut refused = None;
        for _ in 0..=queued {
            match self.read_reply().await? {
                Reply::Status => {}
                Reply::Error(e) => refused = refused.or(Some(e)),
                other => return Err(unexpected("MULTI", &other)),
            }
        }
        match self.read_reply().await? {
            Reply::Array(Some(replies)) if replies.len() == queued => Ok(replies),
            Reply::Error(e) => Err(server_error(refused.unwrap_or(e))),
            other => Err(unexpected("EXEC", &other)),
        }
    }

    async fn call_ok(&mut self, what: &'static str) -> Result<(), RedisError> {
        self.send().await?;
        match self.read_reply().await? {
            Reply::Status => Ok(()),
            Reply::Error(e) => Err(server_error(e)),
            other => Err(unexpected(what, &other)),
        }
    }

    async fn send(&mut self) -> Result<(), RedisError> {
        let stream = self.stream.get_mut();
        stream.write_all(&self.out).await?;
        stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<Reply, RedisError> {
        let Some(count) = self.read_head().await? else {
            return self.take_scalar().await;
        };
        let Some(count) = count else {
            return Ok(Reply::Array(None));
        };
        let mut items = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            if self.read_head().await?.is_some() {
                return Err(protocol("a nested array, which no counter command answers"));
            }
            items.push(self.take_scalar().await?);
        }
        Ok(Reply::Array(Some(items)))
    }

    /// Reads a reply's first line: for an array its length (`None` when null), otherwise
    /// nothing, leaving the line for [`Link::take_scalar`].
    async fn read_head(&mut self) -> Result<Option<Option<usize>>, RedisError> {
        self.line.clear();
        if self.stream.read_until(b'\n', &mut self.line).await? == 0 {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            )));
        }
        if !self.line.ends_with(b"\r\n") || self.line.len() < 3 {
            return Err(protocol("a reply line without its type or CRLF"));
        }
        self.line.truncate(self.line.len() - 2);
        if self.line[0] != b'*' {
            return Ok(None);
        }
        Ok(Some(length(&self.line[1..])?))
    }

    /// The scalar reply whose first line [`Link::read_head`] just read.
    async fn take_scalar(&mut self) -> Result<Reply, RedisError> {
        let text = || String::from_utf8_lossy(&self.line[1..]).into_owned();
        Ok(match self.line[0] {
            b'+' => Reply::Status,
            b'-' => Reply::Error(text()),
            b':' => Reply::Int(
                std::str::from_utf8(&self.line[1..])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| protocol("an integer reply that is not a number"))?,
            ),
            b'$' => match length(&self.line[1..])? {
                None => Reply::Bulk(None),
                Some(len) if len > MAX_BULK => return Err(protocol("a bulk reply over 1 MiB")),
                Some(len) => {
                    let mut bulk = vec![0; len + 2];
                    self.stream.read_exact(&mut bulk).await?;
                    if !bulk.ends_with(b"\r\n") {
                        return Err(protocol("a bulk reply without its CRLF"));
                    }
                    bulk.truncate(len);
                    Reply::Bulk(Some(bulk))
                }
            },
            _ => return Err(protocol("a reply of an unknown type")),
        })
    }
}

/// Appends one command in RESP's array-of-bulk-strings form.
fn command(out: &mut Vec<u8>, args: &[Arg<'_>]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        append_arg(out, arg);
    }
}

fn append_arg(out: &mut Vec<u8>, arg: &Arg<'_>) {
    let number;
    let bytes = match arg {
        Arg::Text(text) => text.as_bytes(),
        Arg::Int(n) => {
            number = n.to_string();
            number.as_bytes()
        }
    };
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `-1` (null) or a count.
fn length(digits: &[u8]) -> Result<Option<usize>, RedisError> {
    if digits == b"-1" {
        return Ok(None);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| protocol("a length that is not a number"))
}

fn protocol(what: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected reply from Redis",
        what.to_string(),
    ))
}

fn unexpected(command: &'static str, reply: &Reply) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        command,
        format!("unexpected reply {reply:?}"),
    ))
}

fn server_error(message: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "Redis answered with an error", message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link over an in-memory pipe, and the other end of it.
    fn pipe() -> (Link, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4096);
        let link = Link {
            stream: BufReader::new(Box::new(ours)),
            out: Vec::new(),
            line: Vec::new(),
        };
        (link, theirs)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(
            &mut out,
            &[Arg::Text("INCRBY"), Arg::Text("k:1"), Arg::Int(12)],
        );
        assert_eq!(out, b"*3\r\n$6\r\nINCRBY\r\n$3\r\nk:1\r\n$2\r\n12\r\n");
    }

    /// Runs one transaction of `queued` commands against a stand-in Redis that answers
    /// `answer` and then closes: the outcome, and what was sent.
    async fn transaction(
        answer: &[u8],
        queued: &[&[Arg<'_>]],
    ) -> (Result<Vec<Reply>, RedisError>, String) {
        let (mut link, mut redis) = pipe();
        redis.write_all(answer).await.unwrap();
        redis.shutdown().await.unwrap();
        link.multi();
        for command in queued {
            link.queue(command);
        }
        let outcome = link.exec(queued.len()).await;
        let mut sent = vec![0; 1024];
        let n = redis.read(&mut sent).await.unwrap();
        (outcome, String::from_utf8_lossy(&sent[..n]).into_owned())
    }

    #[tokio::test]
    async fn a_transaction_sends_once_and_reads_each_reply() {
        let (replies, sent) = transaction(
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n$-1\r\n:8\r\n:59000\r\n",
            &[
                &[Arg::Text("SET"), Arg::Text("k"), Arg::Int(0)],
                &[Arg::Text("INCRBY"), Arg::Text("k"), Arg::Int(2)],
                &[Arg::Text("PTTL"), Arg::Text("k")],
            ],
        )
        .await;
        assert_eq!(
            replies.unwrap(),
            [Reply::Bulk(None), Reply::Int(8), Reply::Int(59_000)]
        );
        assert!(
            sent.starts_with("*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n"),
            "{sent}"
        );
        assert!(sent.ends_with("*1\r\n$4\r\nEXEC\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn errors_inside_and_around_a_transaction_are_errors_or_replies() {
        let incr: &[Arg<'_>] = &[Arg::Text("INCRBY"), Arg::Text("k"), Arg::Int(1)];
        // a command that fails when run is that command's reply
        let (replies, _) = transaction(
            b"+OK\r\n+QUEUED\r\n*1\r\n-ERR value is not an integer\r\n",
            &[incr],
        )
        .await;
        assert_eq!(
            replies.unwrap(),
            [Reply::Error("ERR value is not an integer".into())]
        );
        // a command refused when queued aborts the transaction, and says why
        let (replies, _) = transaction(
            b"+OK\r\n-ERR unknown command\r\n-EXECABORT Transaction discarded\r\n",
            &[&[Arg::Text("NOPE")]],
        )
        .await;
        let err = replies.unwrap_err();
        assert!(err.to_string().contains("unknown command"), "{err}");
        // a connection Redis closed is an error that says so, to be tried again on a new one
        let (replies, _) = transaction(b"", &[incr]).await;
        assert!(replies.unwrap_err().is_connection_dropped());
        // garbage and a closed connection are errors, not panics
        for garbage in [
            &b"+OK\r\n?\r\n"[..],
            b"+OK\r\n+QUEUED\r\n*x\r\n",
            b"+OK\r\n+QUEUED\r\n*1\r\n*1\r\n:1\r\n",
            b"+OK\r\n+QUEUED\r\n*1\r\n$99999999\r\n",
            b"+OK",
        ] {
            let (replies, _) = transaction(garbage, &[incr]).await;
            assert!(replies.is_err(), "{garbage:?}");
        }
    }
}
